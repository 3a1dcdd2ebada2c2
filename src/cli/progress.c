/* Progress lines and the --quiet / --json output modes (see progress.h). */
#include "cli/progress.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "loom/core.h"

int cli_quiet_flag, cli_json_flag;
static cli_out_mode mode = CLI_OUT_TEXT;
static FILE *json_out;       /* the real stdout in JSON mode */
static cli_progress *active; /* the progress line drawn in place, if any */
/* progress and event lines may come from several threads (the server's handlers and round thread) */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

int cli_output_begin(const char *cmd) {
    if (cli_quiet_flag && cli_json_flag) {
        fprintf(stderr, "loom %s: --quiet and --json exclude each other: give one\n", cmd);
        return -1;
    }
    mode = cli_json_flag ? CLI_OUT_JSON : cli_quiet_flag ? CLI_OUT_QUIET : CLI_OUT_TEXT;
    if (mode == CLI_OUT_TEXT) return 0;
    fflush(stdout);
    if (mode == CLI_OUT_JSON) {
        int fd = dup(1);
        if (fd < 0 || !(json_out = fdopen(fd, "w"))) {
            fprintf(stderr, "loom %s: --json: cannot keep stdout\n", cmd);
            if (fd >= 0) close(fd);
            return -1;
        }
        setvbuf(json_out, NULL, _IOLBF, 0);
    }
    /* the command's text output goes nowhere */
    int null = open("/dev/null", O_WRONLY);
    if (null < 0 || dup2(null, 1) < 0) {
        fprintf(stderr, "loom %s: cannot open /dev/null for --%s\n", cmd, mode == CLI_OUT_JSON ? "json" : "quiet");
        if (null >= 0) close(null);
        return -1;
    }
    close(null);
    return 0;
}

cli_out_mode cli_output_mode(void) { return mode; }

void cli_info(const char *fmt, ...) {
    if (mode != CLI_OUT_TEXT) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* "  label value" for each finite value, appended to buf. */
static void text_kv(char *buf, size_t n, const cli_kv *kv, int nkv) {
    size_t at = strlen(buf);
    for (int i = 0; i < nkv && at < n; i++) {
        if (!isfinite(kv[i].value)) continue;
        char label[64];
        snprintf(label, sizeof label, "%s", kv[i].key);
        for (char *c = label; *c; c++)
            if (*c == '_') *c = ' ';
        at += (size_t)snprintf(buf + at, n - at, "  %s ", label);
        if (at >= n) break;
        at += (size_t)snprintf(buf + at, n - at, kv[i].fmt ? kv[i].fmt : "%g", kv[i].value);
    }
}

static void json_kv(FILE *f, const cli_kv *kv, int nkv) {
    for (int i = 0; i < nkv; i++)
        if (isfinite(kv[i].value)) fprintf(f, ",\"%s\":%.10g", kv[i].key, kv[i].value);
}

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

void cli_progress_start(cli_progress *p, const char *cmd, const char *unit, const char *sub, long total, double every) {
    memset(p, 0, sizeof *p);
    p->cmd = cmd;
    p->unit = unit;
    p->sub = sub;
    p->total = total;
    p->every = every;
    p->t0 = p->last_line = loom_now();
    p->last_draw = -1;
    p->tty = cli_tty();
    char w[32];
    p->width = snprintf(w, sizeof w, "%ld", total);
    if (p->width < 4) p->width = 4;
    p->plain_every = 1;
}

static void draw(cli_progress *p, const char *line) {
    fprintf(stderr, "\r%s\033[K", line);
    fflush(stderr);
    if (line != p->shown) snprintf(p->shown, sizeof p->shown, "%s", line);
    active = p;
    p->open = 1;
    p->last_draw = loom_now();
}

/* "  round    3/30" + sub-count + values + ETA from `frac` units done. */
static void format(const cli_progress *p, char *buf, size_t n, long done, long sub_done, long sub_total, const cli_kv *kv,
                   int nkv, double frac, int pad) {
    snprintf(buf, n, "  %s %*ld/%ld", p->unit, pad ? p->width : 0, done, p->total);
    if (p->sub && sub_total > 0) {
        size_t at = strlen(buf);
        snprintf(buf + at, n - at, "  %s %ld/%ld%s", p->sub, sub_done, sub_total, p->tty ? "" : " done");
    }
    text_kv(buf, n, kv, nkv);
    double el = loom_now() - p->t0;
    char eta[32], els[32];
    size_t at = strlen(buf);
    if (frac > 0 && frac < (double)p->total)
        snprintf(buf + at, n - at, "  elapsed %s  ETA %s", cli_duration(el, els, sizeof els),
                 cli_duration(el / frac * ((double)p->total - frac), eta, sizeof eta));
    else snprintf(buf + at, n - at, "  elapsed %s", cli_duration(el, els, sizeof els));
}

static void locked_progress_step(cli_progress *p, long done, long sub_done, long sub_total, const cli_kv *kv, int nkv) {
    if (mode != CLI_OUT_TEXT) return;
    double now = loom_now();
    double frac = (double)(done - 1) + (sub_total > 0 ? (double)sub_done / (double)sub_total : 0);
    char line[512];
    if (p->tty) {
        if (p->last_draw >= 0 && now - p->last_draw < 0.1) return;
        format(p, line, sizeof line, done, sub_done, sub_total, kv, nkv, frac, 0);
        draw(p, line);
    } else if (p->every >= 0 && now - p->last_line >= p->every && (sub_total <= 0 || sub_done < sub_total)) {
        format(p, line, sizeof line, done, sub_done, sub_total, kv, nkv, frac, 0);
        fprintf(stderr, "%s\n", line);
        p->last_line = now;
    }
}

void cli_progress_step(cli_progress *p, long done, long sub_done, long sub_total, const cli_kv *kv, int nkv) {
    pthread_mutex_lock(&mu);
    locked_progress_step(p, done, sub_done, sub_total, kv, nkv);
    pthread_mutex_unlock(&mu);
}

static void locked_progress_done(cli_progress *p, long done, const cli_kv *kv, int nkv) {
    double now = loom_now();
    if (mode == CLI_OUT_QUIET) return;
    int last = done >= p->total;
    if (p->tty && mode == CLI_OUT_TEXT) {
        if (!last && p->last_draw >= 0 && now - p->last_draw < 0.1) return;
    } else if (!last && done != 1 && p->plain_every > 1 && done % p->plain_every) return;
    p->last_line = now;
    if (mode == CLI_OUT_JSON) {
        double el = loom_now() - p->t0;
        fprintf(json_out, "{\"type\":\"progress\",\"cmd\":");
        json_string(json_out, p->cmd);
        fprintf(json_out, ",\"%s\":%ld,\"total\":%ld,\"elapsed_s\":%.3f", p->unit, done, p->total, el);
        if (done > 0 && done < p->total) fprintf(json_out, ",\"eta_s\":%.3f", el / (double)done * (double)(p->total - done));
        json_kv(json_out, kv, nkv);
        fprintf(json_out, "}\n");
        return;
    }
    char line[512];
    format(p, line, sizeof line, done, 0, 0, kv, nkv, (double)done, 1);
    if (p->tty) draw(p, line);
    else fprintf(stderr, "%s\n", line);
}

void cli_progress_done(cli_progress *p, long done, const cli_kv *kv, int nkv) {
    pthread_mutex_lock(&mu);
    locked_progress_done(p, done, kv, nkv);
    pthread_mutex_unlock(&mu);
}

static void locked_progress_end(cli_progress *p) {
    if (p->open && mode == CLI_OUT_TEXT) fprintf(stderr, "\n");
    p->open = 0;
    if (active == p) active = NULL;
}

void cli_progress_end(cli_progress *p) {
    pthread_mutex_lock(&mu);
    locked_progress_end(p);
    pthread_mutex_unlock(&mu);
}

static void locked_progress_note(const char *cmd, int warn, const char *level, const char *text) {
    if (mode == CLI_OUT_JSON) {
        fprintf(json_out, "{\"type\":\"event\",\"cmd\":");
        json_string(json_out, cmd);
        fprintf(json_out, ",\"level\":");
        json_string(json_out, level);
        fprintf(json_out, ",\"message\":");
        json_string(json_out, text);
        fprintf(json_out, "}\n");
    }
    if (mode != CLI_OUT_TEXT && !warn) return;
    cli_progress *p = active && active->open && mode == CLI_OUT_TEXT ? active : NULL;
    if (p) fprintf(stderr, "\r\033[K");
    fprintf(stderr, "%s\n", text);
    if (p) draw(p, p->shown);
    else fflush(stderr);
}

void cli_progress_note(const char *cmd, int warn, const char *level, const char *text) {
    pthread_mutex_lock(&mu);
    locked_progress_note(cmd, warn, level, text);
    pthread_mutex_unlock(&mu);
}

void cli_result(const char *cmd, const cli_kv *kv, int nkv, const char *const *strs, int nstr) {
    cli_json_line("result", cmd, kv, nkv, strs, nstr);
}

void cli_json_line(const char *type, const char *cmd, const cli_kv *kv, int nkv, const char *const *strs, int nstr) {
    if (mode != CLI_OUT_JSON) return;
    pthread_mutex_lock(&mu);
    fprintf(json_out, "{\"type\":");
    json_string(json_out, type);
    fprintf(json_out, ",\"cmd\":");
    json_string(json_out, cmd);
    for (int i = 0; i < nstr; i++) {
        fputc(',', json_out);
        json_string(json_out, strs[2 * i]);
        fputc(':', json_out);
        json_string(json_out, strs[2 * i + 1]);
    }
    json_kv(json_out, kv, nkv);
    fprintf(json_out, "}\n");
    pthread_mutex_unlock(&mu);
}
