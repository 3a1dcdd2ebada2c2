/* Unlearning a server's run: a new state directory that restarts the run without one client
 * (include/loom/net.h, loom_server_unlearn; include/loom/unlearn.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/net.h"
#include "loom/unlearn.h"
#include "net/server_impl.h"

/* from/name copied to to/name (0600, durable); a missing source is skipped when optional. */
static int copy_one(const char *from, const char *to, const char *name, int optional) {
    char src[4400];
    snprintf(src, sizeof src, "%s/%s", from, name);
    struct stat st;
    if (stat(src, &st) != 0) {
        if (optional && errno == ENOENT) return LOOM_OK;
        return loom_error(LOOM_EIO, "cannot read %s: %s", src, strerror(errno));
    }
    char *buf = NULL;
    size_t len = 0;
    int rc = loom_read_file(src, &buf, &len);
    if (rc == LOOM_OK) rc = net_write_durable(to, name, buf, len);
    free(buf);
    return rc;
}

int loom_server_unlearn(const char *state_dir, const char *name, const char *out_dir, loom_server_unlearn_info *info) {
    memset(info, 0, sizeof *info);
    char path[4400];
    struct stat st;
    snprintf(path, sizeof path, "%s/state.db", state_dir);
    if (stat(path, &st) != 0) return loom_error(LOOM_ENOTFOUND, "--state %s holds no state.db (not a server's state)", state_dir);
    net_store *s = NULL;
    net_run run;
    memset(&run, 0, sizeof run);
    int found = 0, rc = net_store_open(&s, state_dir);
    if (rc == LOOM_OK) rc = net_store_get_run(s, &run, &found);
    if (rc == LOOM_OK && !found) rc = loom_error(LOOM_EINVAL, "--state %s: no run was started there yet", state_dir);
    info->client = -1;
    int k = 0;
    for (char *p = run.clients; rc == LOOM_OK && p && *p; k++) {
        size_t len = strcspn(p, "\n");
        if (strlen(name) == len && !strncmp(p, name, len)) info->client = k;
        p += len + (p[len] == '\n');
    }
    if (rc == LOOM_OK && info->client < 0)
        rc = loom_error(LOOM_ENOTFOUND, "--client '%s' is not a client of the run in %s", name, state_dir);
    info->rounds = run.rounds;
    if (rc == LOOM_OK) rc = net_store_first_member(s, info->client, &info->first_round);
    if (rc != LOOM_OK || info->first_round == 0) goto out;
    /* the last kept start at or before the first round */
    info->restart_round = 1;
    for (int r = info->first_round; r >= 2; r--) {
        if (loom_unlearn_start_path(path, sizeof path, state_dir, r) == LOOM_OK && stat(path, &st) == 0) {
            info->restart_round = r;
            break;
        }
    }
    snprintf(path, sizeof path, "%s/state.db", out_dir);
    if (mkdir(out_dir, 0700) != 0 && errno != EEXIST) {
        rc = loom_error(LOOM_EIO, "cannot create %s: %s", out_dir, strerror(errno));
        goto out;
    }
    if (stat(path, &st) == 0) {
        rc = loom_error(LOOM_EINVAL, "--out %s already holds a server state (state.db)", out_dir);
        goto out;
    }
    if ((rc = net_store_restart_without(s, info->restart_round, info->client, name, path)) != LOOM_OK) goto out;
    char tls[4400];
    snprintf(tls, sizeof tls, "%s/tls", out_dir);
    if (mkdir(tls, 0700) != 0 && errno != EEXIST) {
        rc = loom_error(LOOM_EIO, "cannot create %s: %s", tls, strerror(errno));
        goto out;
    }
    if ((rc = copy_one(state_dir, out_dir, "tls/cert.pem", 1)) != LOOM_OK ||
        (rc = copy_one(state_dir, out_dir, "tls/key.pem", 1)) != LOOM_OK ||
        (rc = copy_one(state_dir, out_dir, "metrics.jsonl", 1)) != LOOM_OK)
        goto out;
    if (info->restart_round > 1) {
        if ((rc = loom_unlearn_mkdirs(out_dir, 0)) != LOOM_OK) goto out;
        for (int r = 2; r <= info->restart_round && rc == LOOM_OK; r++) {
            char file[64];
            snprintf(file, sizeof file, "unlearn/start_%06d.safetensors", r);
            rc = copy_one(state_dir, out_dir, file, r < info->restart_round);
        }
        char file[64];
        snprintf(file, sizeof file, "unlearn/start_%06d.safetensors", info->restart_round);
        char *buf = NULL;
        size_t len = 0;
        snprintf(path, sizeof path, "%s/%s", state_dir, file);
        if (rc == LOOM_OK) rc = loom_read_file(path, &buf, &len);
        if (rc == LOOM_OK) rc = net_write_durable(out_dir, "checkpoint.safetensors", buf, len);
        free(buf);
    }
out:
    net_run_clear(&run);
    net_store_close(s);
    return rc;
}
