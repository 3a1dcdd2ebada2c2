/* The run-status board (net/ layer, transport-free): what a dashboard shows of a federated run, fed by
 * its driver and rendered as the JSON of the dashboard API (docs/protocol.md, "Dashboard").
 *
 * A driver (loom sim, loom server, loom report --serve) feeds the board; HTTP handlers on other threads
 * render it. Every call takes the board's own lock, so feeding and rendering may happen on any threads.
 *
 *     loom_dash *d;
 *     loom_dash_create(&d);
 *     loom_dash_config_json(d, run_json);                 // the run configuration (key/values)
 *     loom_dash_set_clients(d, n, names);                 // the client table
 *     loom_dash_progress(d, 0, rounds, "waiting");
 *     ec.sink = loom_dash_tee(&tee, d, jsonl_sink);       // the metrics rows reach it as metrics.jsonl gets them
 *     ... rounds ...; loom_dash_client_seen(d, k, 1, 0, now, "training"); loom_dash_sample(d, text);
 *     char *status = loom_dash_status_json(d, now);       // GET /v1/dash/status
 *     char *rows = loom_dash_metrics_json(d, since);      // GET /v1/dash/metrics?since=N
 *
 * What it keeps:
 *   config    up to LOOM_DASH_MAX_CONFIG keys (64 bytes each) with string values (LOOM_DASH_MAX_VALUE
 *             bytes each, longer values cut); a key given twice keeps its last value.
 *   progress  the round (1-based; 0 before the first) of `rounds`, and a state word ("waiting", "fit",
 *             "eval", "done", ...).
 *   clients   up to LOOM_DASH_MAX_CLIENTS rows (index = the run's client id): name, registered, active,
 *             state word, last seen (wall seconds, 0 = never), rounds contributed (client rows with
 *             status "accepted"), bytes up (their bytes_up), bytes down (the round row's bytes_down
 *             shared evenly among its sampled clients), stragglers (status "late") and dropouts
 *             (status "client failure" or "no update"). The status renders at most
 *             LOOM_DASH_STATUS_CLIENTS of them (lowest ids first; "clients_total" says how many exist).
 *   rows      the round rows exactly as metrics.jsonl has them (loom_metrics_jsonl_round), with, per
 *             round, the spread of the accepted clients' training losses (n, min, mean, max) from its
 *             client rows. At most LOOM_DASH_MAX_ROWS rounds: the oldest are dropped beyond that
 *             ("first_round" of the metrics answer says where the kept rows start).
 *   sample    the latest generated text (at most LOOM_DASH_MAX_SAMPLE bytes, cut at a UTF-8 boundary)
 *             and the round it was generated after.
 * Client rows carry no data of a client beyond its metrics (no examples, no tokens' text). */
#ifndef LOOM_DASH_H
#define LOOM_DASH_H

#include <stddef.h>
#include <stdint.h>

#include "loom/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_DASH_MAX_CONFIG 256
#define LOOM_DASH_MAX_VALUE 1024
#define LOOM_DASH_MAX_CLIENTS (1 << 20)
#define LOOM_DASH_STATUS_CLIENTS 1000
#define LOOM_DASH_MAX_ROWS 100000
#define LOOM_DASH_MAX_SAMPLE 4096
#define LOOM_DASH_MAX_LINE (64 * 1024) /* the longest metrics.jsonl line loom_dash_add_line takes */

typedef struct loom_dash loom_dash;

int loom_dash_create(loom_dash **out);
void loom_dash_free(loom_dash *d); /* accepts NULL */

/* One configuration entry (key: 1..63 bytes). Beyond LOOM_DASH_MAX_CONFIG keys: LOOM_EINVAL. */
int loom_dash_config(loom_dash *d, const char *key, const char *value);
/* Every member of a JSON object text (the run configuration: RUN.json's keys); strings as they are,
 * other values as compact JSON. Not an object: LOOM_EFORMAT. */
int loom_dash_config_json(loom_dash *d, const char *json_object);

/* Round `round` (0 before the first) of `rounds` (0: unknown), and the state word (at most 31 bytes). */
void loom_dash_progress(loom_dash *d, int round, int rounds, const char *state);

/* The client table: n clients (0 <= n <= LOOM_DASH_MAX_CLIENTS) named names[i] (NULL: "client-i";
 * names longer than 64 bytes are cut). Existing counts of clients that keep their index stay. */
int loom_dash_set_clients(loom_dash *d, int n, const char *const *names);
/* Live state of client k (a driver's view): registered (said hello, or part of the population), active
 * (holds a task now), last seen (wall seconds; 0 keeps the previous value), its state word (NULL keeps
 * it). An index outside the table: ignored. */
void loom_dash_client_seen(loom_dash *d, int client, int registered, int active, double last_seen,
                           const char *state);

/* The metrics rows: the round row then its client rows, as the engine's sink gives them
 * (include/loom/engine.h). The board renders them with loom_metrics_jsonl_round/_client. */
void loom_dash_round(loom_dash *d, const loom_round_metrics *m, const int *clients, int n);
void loom_dash_client(loom_dash *d, const loom_client_row *r, const char *name, uint64_t examples);
/* One metrics.jsonl line (a finished run's file, loom report --serve): a round or client row. A line that
 * is not a JSON object with a "type" of "round" or "client" and a whole "round" >= 1: LOOM_EFORMAT
 * (other types are skipped: LOOM_OK). Longer than LOOM_DASH_MAX_LINE: LOOM_EFORMAT. */
int loom_dash_add_line(loom_dash *d, const char *line, size_t len);
/* Every line of a metrics.jsonl file (path names it in errors: "FILE line N: ..."); at most max_bytes
 * are read (0: 1 GiB). Client names are taken from the client rows when the table has none. */
int loom_dash_load_jsonl(loom_dash *d, const char *path, size_t max_bytes);

/* The latest generated sample, after round `round`. */
void loom_dash_sample(loom_dash *d, int round, const char *text);

/* The sink that gives every row to the board and then to `next` (its functions may be NULL): a driver
 * puts it where its metrics.jsonl sink was. names[client] names the client rows (NULL: the board's
 * table); examples come from the rows. t must outlive the sink. */
typedef struct {
    loom_dash *d;
    loom_metrics_sink next;
    const char *const *names;
} loom_dash_tee;
loom_metrics_sink loom_dash_sink(loom_dash_tee *t, loom_dash *d, loom_metrics_sink next, const char *const *names);

/* GET /v1/dash/status: {"config":{...},"round":R,"rounds":N,"state":"...","updated_at":T,"now":now,
 * "clients_total":N,"clients":[{"client","name","registered","active","state","last_seen",
 * "rounds_contributed","bytes_up","bytes_down","stragglers","dropouts"}...],"latest":ROW|null,
 * "sample":{"round","text"}|null,"dp":bool,"attack":bool}. malloc'd text, NULL when out of memory. */
char *loom_dash_status_json(loom_dash *d, double now);
/* GET /v1/dash/metrics?since=N: the kept round rows with round > since, in round order:
 * {"since":N,"first_round":F,"last_round":L,"rows":[ROW...],"spread":[{"round","n","loss_min",
 * "loss_mean","loss_max"}...]} (spread parallel to rows). malloc'd text, NULL when out of memory. */
char *loom_dash_metrics_json(loom_dash *d, long since);

/* ---- the dashboard over HTTP (the page, its script and the API), shared by every server of it ---- */

/* The page's files, built into the binary from web/: "/" (index.html), "/dash.js", "/dash.css". NULL
 * for another path. */
typedef struct {
    const char *path, *ctype;
    const unsigned char *data;
    size_t len;
} loom_dash_asset;
const loom_dash_asset *loom_dash_find_asset(const char *path);

/* One dashboard request whose caller is already authorised: "/" and the assets, /v1/dash/status,
 * /v1/dash/metrics (since: the ?since= argument, NULL = 0). *status is the HTTP status; *body malloc'd
 * (JSON or an asset's copy), *ctype static. Returns 1 when path is a dashboard path, else 0 (nothing
 * set). A bad since: 400 with a JSON error naming it. */
int loom_dash_route(loom_dash *d, const char *method, const char *path, const char *since, double now,
                    int *status, const char **ctype, char **body, size_t *len);
/* 1 when path is one of the API's (needs a token), 0 for the page's files and other paths. */
int loom_dash_is_api(const char *path);

/* A plain HTTP server of one board (loom sim --serve, loom report --serve): libmicrohttpd on listen
 * ("[HOST:]PORT"; host default 127.0.0.1; port 0 picks a free one), the page without a token and the
 * API with "Authorization: Bearer TOKEN" (else 401). The board stays the caller's. */
typedef struct loom_dash_http loom_dash_http;
int loom_dash_serve(loom_dash_http **out, loom_dash *d, const char *listen, const char *token, int *port);
void loom_dash_serve_stop(loom_dash_http *h); /* accepts NULL */
/* Parses "[HOST:]PORT" (the --serve flag): host into host[hostn] (default 127.0.0.1), the port. A bad
 * value: LOOM_EINVAL naming flag. */
int loom_dash_parse_listen(const char *s, const char *flag, char *host, size_t hostn, int *port);

#ifdef __cplusplus
}
#endif
#endif
