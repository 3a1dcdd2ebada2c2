/* The server's durable state: one SQLite database, state_dir/state.db, in WAL mode with
 * synchronous=FULL (a committed row survives a crash). One connection, serialized by a mutex. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loom/core.h"
#include "net/net_impl.h"

struct net_store {
    sqlite3 *db;
    pthread_mutex_t mu;
    char path[4096];
};

static const char *SCHEMA =
    "CREATE TABLE IF NOT EXISTS run(id INTEGER PRIMARY KEY CHECK (id = 1), run_id TEXT NOT NULL,"
    " dim INTEGER NOT NULL, seed TEXT NOT NULL, strategy TEXT NOT NULL, rounds INTEGER NOT NULL,"
    " clients TEXT NOT NULL, created_at REAL);"
    "CREATE TABLE IF NOT EXISTS clients(name TEXT PRIMARY KEY, token_sha256 BLOB NOT NULL,"
    " role TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, created_at REAL);"
    "CREATE TABLE IF NOT EXISTS rounds(round INTEGER PRIMARY KEY, state TEXT NOT NULL, opened_at REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS sampled(round INTEGER NOT NULL, client INTEGER NOT NULL,"
    " PRIMARY KEY (round, client));"
    "CREATE TABLE IF NOT EXISTS updates(round INTEGER NOT NULL, client INTEGER NOT NULL, kind TEXT NOT NULL,"
    " idem_key TEXT NOT NULL, sha256 TEXT NOT NULL, examples INTEGER, loss REAL, tokens INTEGER,"
    " file TEXT NOT NULL, reason TEXT NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (round, client));"
    "CREATE INDEX IF NOT EXISTS updates_key ON updates(client, idem_key);"
    "CREATE TABLE IF NOT EXISTS evals(round INTEGER NOT NULL, client INTEGER NOT NULL, loss_sum REAL,"
    " tokens INTEGER, correct INTEGER, count INTEGER, PRIMARY KEY (round, client));"
    "CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
    " round INTEGER, kind TEXT NOT NULL, text TEXT NOT NULL);"
    /* unlearning (include/loom/unlearn.h): who contributed to which round with which weight, and the
     * clients removed from the population of a run restarted by loom unlearn */
    "CREATE TABLE IF NOT EXISTS members(round INTEGER NOT NULL, client INTEGER NOT NULL, weight INTEGER NOT NULL,"
    " PRIMARY KEY (round, client));"
    "CREATE TABLE IF NOT EXISTS removed(client INTEGER PRIMARY KEY, name TEXT NOT NULL, at REAL);";

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int db_error(net_store *s, const char *what) {
    return loom_error(LOOM_EIO, "%s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

static int exec(net_store *s, const char *sql) {
    char *err = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &err) != SQLITE_OK) {
        int rc = loom_error(LOOM_EIO, "%s: %s", s->path, err ? err : "error");
        sqlite3_free(err);
        return rc;
    }
    return LOOM_OK;
}

static int prepare(net_store *s, const char *sql, sqlite3_stmt **st) {
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK) return db_error(s, "prepare");
    return LOOM_OK;
}

int net_store_open(net_store **out, const char *state_dir) {
    *out = NULL;
    if (!state_dir || !*state_dir) return loom_error(LOOM_EINVAL, "the server needs a state directory (--state)");
    if (mkdir(state_dir, 0700) != 0 && errno != EEXIST)
        return loom_error(LOOM_EIO, "cannot create %s: %s", state_dir, strerror(errno));
    net_store *s = calloc(1, sizeof *s);
    if (!s) return loom_error(LOOM_ENOMEM, "out of memory");
    if (snprintf(s->path, sizeof s->path, "%s/state.db", state_dir) >= (int)sizeof s->path) {
        free(s);
        return loom_error(LOOM_EINVAL, "state directory path too long: %s", state_dir);
    }
    /* created 0600 before SQLite sees it: its -wal and -shm files take the database's mode */
    int fd = open(s->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        int rc = loom_error(LOOM_EIO, "cannot open %s: %s", s->path, strerror(errno));
        free(s);
        return rc;
    }
    close(fd);
    pthread_mutex_init(&s->mu, NULL);
    if (sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
        int rc = loom_error(LOOM_EIO, "cannot open %s: %s", s->path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
        net_store_close(s);
        return rc;
    }
    sqlite3_busy_timeout(s->db, 10000);
    int rc = exec(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;");
    if (rc == LOOM_OK) rc = exec(s, SCHEMA);
    if (rc != LOOM_OK) {
        net_store_close(s);
        return rc;
    }
    *out = s;
    return LOOM_OK;
}

void net_store_close(net_store *s) {
    if (!s) return;
    if (s->db) sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ------------------------------------------------------------------ identities */

int net_store_add_client(net_store *s, const char *name, const uint8_t token_sha[32], int role) {
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT revoked FROM clients WHERE name = ?", &st);
    if (rc == LOOM_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        int step = sqlite3_step(st);
        if (step == SQLITE_ROW && sqlite3_column_int(st, 0) == 0)
            rc = loom_error(LOOM_EINVAL, "client %s is already registered (revoke it first to give it a new token)", name);
        else if (step != SQLITE_ROW && step != SQLITE_DONE) rc = db_error(s, "reading clients");
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc == LOOM_OK)
        rc = prepare(s,
                     "INSERT OR REPLACE INTO clients(name, token_sha256, role, revoked, created_at) "
                     "VALUES (?, ?, ?, 0, ?)",
                     &st);
    if (rc == LOOM_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 2, token_sha, 32, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, role == LOOM_NET_ROLE_ADMIN ? "admin" : role == LOOM_NET_ROLE_VIEWER ? "viewer" : "client", -1,
                          SQLITE_STATIC);
        sqlite3_bind_double(st, 4, wall());
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "registering a client");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_revoke_client(net_store *s, const char *name) {
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "UPDATE clients SET revoked = 1 WHERE name = ?", &st);
    if (rc == LOOM_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "revoking a client");
        else if (sqlite3_changes(s->db) == 0) rc = loom_error(LOOM_ENOTFOUND, "no client named %s is registered", name);
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_identities(net_store *s, net_identity **out, int *n) {
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT name, token_sha256, role, revoked FROM clients ORDER BY name", &st);
    net_identity *v = NULL;
    int cnt = 0, cap = 0, step;
    while (rc == LOOM_OK && (step = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            net_identity *nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        net_identity *id = &v[cnt];
        memset(id, 0, sizeof *id);
        const char *nm = (const char *)sqlite3_column_text(st, 0);
        snprintf(id->name, sizeof id->name, "%s", nm ? nm : "");
        if (sqlite3_column_bytes(st, 1) == 32) memcpy(id->token_sha, sqlite3_column_blob(st, 1), 32);
        const char *role = (const char *)sqlite3_column_text(st, 2);
        id->admin = role && !strcmp(role, "admin");
        id->viewer = role && !strcmp(role, "viewer");
        id->revoked = sqlite3_column_int(st, 3) != 0;
        cnt++;
    }
    if (rc == LOOM_OK && step != SQLITE_DONE) rc = db_error(s, "reading clients");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    if (rc != LOOM_OK) {
        free(v);
        return rc;
    }
    *out = v;
    *n = cnt;
    return LOOM_OK;
}

/* ------------------------------------------------------------------ the run */

void net_run_clear(net_run *r) {
    free(r->clients);
    memset(r, 0, sizeof *r);
}

int net_store_get_run(net_store *s, net_run *r, int *found) {
    memset(r, 0, sizeof *r);
    *found = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT run_id, dim, seed, strategy, rounds, clients FROM run WHERE id = 1", &st);
    if (rc == LOOM_OK) {
        int step = sqlite3_step(st);
        if (step == SQLITE_ROW) {
            const char *id = (const char *)sqlite3_column_text(st, 0);
            const char *seed = (const char *)sqlite3_column_text(st, 2);
            const char *strat = (const char *)sqlite3_column_text(st, 3);
            const char *cl = (const char *)sqlite3_column_text(st, 5);
            r->run_id = id ? strtoull(id, NULL, 16) : 0;
            r->dim = (size_t)sqlite3_column_int64(st, 1);
            r->seed = seed ? strtoull(seed, NULL, 10) : 0;
            snprintf(r->strategy, sizeof r->strategy, "%s", strat ? strat : "");
            r->rounds = sqlite3_column_int(st, 4);
            r->clients = strdup(cl ? cl : "");
            if (!r->clients) rc = loom_error(LOOM_ENOMEM, "out of memory");
            else *found = 1;
        } else if (step != SQLITE_DONE) rc = db_error(s, "reading the run");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_put_run(net_store *s, const net_run *r) {
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s,
                     "INSERT INTO run(id, run_id, dim, seed, strategy, rounds, clients, created_at) "
                     "VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                     &st);
    if (rc == LOOM_OK) {
        char id[17], seed[24];
        snprintf(id, sizeof id, "%016llx", (unsigned long long)r->run_id);
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->seed);
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)r->dim);
        sqlite3_bind_text(st, 3, seed, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, r->strategy, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 5, r->rounds);
        sqlite3_bind_text(st, 6, r->clients ? r->clients : "", -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(st, 7, wall());
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "storing the run");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ------------------------------------------------------------------ rounds */

int net_store_open_round(net_store *s, int round, double now, const int *sampled, int n, double *opened_at) {
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = exec(s, "BEGIN IMMEDIATE");
    int began = rc == LOOM_OK;
    if (rc == LOOM_OK) rc = prepare(s, "SELECT opened_at FROM rounds WHERE round = ?", &st);
    int exists = 0;
    if (rc == LOOM_OK) {
        sqlite3_bind_int(st, 1, round);
        int step = sqlite3_step(st);
        if (step == SQLITE_ROW) {
            exists = 1;
            *opened_at = sqlite3_column_double(st, 0);
        } else if (step != SQLITE_DONE) rc = db_error(s, "reading rounds");
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc == LOOM_OK && !exists) {
        *opened_at = now;
        rc = prepare(s, "INSERT INTO rounds(round, state, opened_at) VALUES (?, 'open', ?)", &st);
        if (rc == LOOM_OK) {
            sqlite3_bind_int(st, 1, round);
            sqlite3_bind_double(st, 2, now);
            if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "storing a round");
        }
        sqlite3_finalize(st);
        st = NULL;
        if (rc == LOOM_OK) rc = prepare(s, "INSERT OR IGNORE INTO sampled(round, client) VALUES (?, ?)", &st);
        for (int i = 0; rc == LOOM_OK && i < n; i++) {
            sqlite3_reset(st);
            sqlite3_bind_int(st, 1, round);
            sqlite3_bind_int(st, 2, sampled[i]);
            if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "storing the sampled clients");
        }
        sqlite3_finalize(st);
    }
    if (began) {
        if (rc == LOOM_OK) rc = exec(s, "COMMIT");
        else exec(s, "ROLLBACK");
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_round_done(net_store *s, int round) {
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "UPDATE rounds SET state = 'done' WHERE round = ?", &st);
    if (rc == LOOM_OK) {
        sqlite3_bind_int(st, 1, round);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "closing a round");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_started(net_store *s, int *started) {
    *started = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT COUNT(*) FROM rounds", &st);
    if (rc == LOOM_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) *started = sqlite3_column_int(st, 0) > 0;
        else rc = db_error(s, "reading rounds");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ------------------------------------------------------------------ answers */

static void copy_col(sqlite3_stmt *st, int i, char *dst, size_t n) {
    const char *v = (const char *)sqlite3_column_text(st, i);
    snprintf(dst, n, "%s", v ? v : "");
}

#define ANSWER_COLS "round, client, kind, idem_key, sha256, examples, loss, tokens, file, reason, received_at"

static void read_answer(sqlite3_stmt *st, net_answer *a) {
    memset(a, 0, sizeof *a);
    a->round = sqlite3_column_int(st, 0);
    a->client = sqlite3_column_int(st, 1);
    copy_col(st, 2, a->kind, sizeof a->kind);
    copy_col(st, 3, a->idem_key, sizeof a->idem_key);
    copy_col(st, 4, a->sha256, sizeof a->sha256);
    a->examples = (uint64_t)sqlite3_column_int64(st, 5);
    a->loss = sqlite3_column_double(st, 6);
    a->tokens = sqlite3_column_int64(st, 7);
    copy_col(st, 8, a->file, sizeof a->file);
    copy_col(st, 9, a->reason, sizeof a->reason);
    a->received_at = sqlite3_column_double(st, 10);
}

int net_store_put_answer(net_store *s, const net_answer *a) {
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "INSERT INTO updates(" ANSWER_COLS ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", &st);
    if (rc == LOOM_OK) {
        sqlite3_bind_int(st, 1, a->round);
        sqlite3_bind_int(st, 2, a->client);
        sqlite3_bind_text(st, 3, a->kind, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, a->idem_key, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 5, a->sha256, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 6, (sqlite3_int64)a->examples);
        sqlite3_bind_double(st, 7, a->loss);
        sqlite3_bind_int64(st, 8, (sqlite3_int64)a->tokens);
        sqlite3_bind_text(st, 9, a->file, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 10, a->reason, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(st, 11, a->received_at);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "storing an update");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_find_key(net_store *s, int client, const char *idem_key, net_answer *a, int *found) {
    *found = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT " ANSWER_COLS " FROM updates WHERE client = ? AND idem_key = ? LIMIT 1", &st);
    if (rc == LOOM_OK) {
        sqlite3_bind_int(st, 1, client);
        sqlite3_bind_text(st, 2, idem_key, -1, SQLITE_TRANSIENT);
        int step = sqlite3_step(st);
        if (step == SQLITE_ROW) {
            read_answer(st, a);
            *found = 1;
        } else if (step != SQLITE_DONE) rc = db_error(s, "reading updates");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_answers(net_store *s, int round, net_answer **out, int *n) {
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT " ANSWER_COLS " FROM updates WHERE round = ? ORDER BY client", &st);
    net_answer *v = NULL;
    int cnt = 0, cap = 0, step = SQLITE_DONE;
    if (rc == LOOM_OK) sqlite3_bind_int(st, 1, round);
    while (rc == LOOM_OK && (step = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            net_answer *nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        read_answer(st, &v[cnt++]);
    }
    if (rc == LOOM_OK && step != SQLITE_DONE) rc = db_error(s, "reading updates");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    if (rc != LOOM_OK) {
        free(v);
        return rc;
    }
    *out = v;
    *n = cnt;
    return LOOM_OK;
}

int net_store_count_updates(net_store *s, int *n) {
    *n = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT COUNT(*) FROM updates WHERE kind = 'update'", &st);
    if (rc == LOOM_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) *n = sqlite3_column_int(st, 0);
        else rc = db_error(s, "counting updates");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ------------------------------------------------------------------ evaluations */

int net_store_put_eval(net_store *s, int round, int client, const loom_eval_result *r) {
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "INSERT INTO evals(round, client, loss_sum, tokens, correct, count) VALUES (?, ?, ?, ?, ?, ?)",
                     &st);
    if (rc == LOOM_OK) {
        sqlite3_bind_int(st, 1, round);
        sqlite3_bind_int(st, 2, client);
        sqlite3_bind_double(st, 3, r->loss_sum);
        sqlite3_bind_int64(st, 4, r->tokens);
        sqlite3_bind_int64(st, 5, r->correct);
        sqlite3_bind_int64(st, 6, r->count);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "storing an evaluation");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_evals(net_store *s, int round, int **clients, loom_eval_result **res, int *n) {
    *clients = NULL;
    *res = NULL;
    *n = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT client, loss_sum, tokens, correct, count FROM evals WHERE round = ? ORDER BY client", &st);
    int cnt = 0, cap = 0, step = SQLITE_DONE;
    int *cv = NULL;
    loom_eval_result *rv = NULL;
    if (rc == LOOM_OK) sqlite3_bind_int(st, 1, round);
    while (rc == LOOM_OK && (step = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            int *nc = realloc(cv, (size_t)cap * sizeof *cv);
            if (nc) cv = nc;
            loom_eval_result *nr = nc ? realloc(rv, (size_t)cap * sizeof *rv) : NULL;
            if (nr) rv = nr;
            if (!nc || !nr) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
        }
        cv[cnt] = sqlite3_column_int(st, 0);
        rv[cnt].loss_sum = sqlite3_column_double(st, 1);
        rv[cnt].tokens = (long)sqlite3_column_int64(st, 2);
        rv[cnt].correct = (long)sqlite3_column_int64(st, 3);
        rv[cnt].count = (long)sqlite3_column_int64(st, 4);
        cnt++;
    }
    if (rc == LOOM_OK && step != SQLITE_DONE) rc = db_error(s, "reading evaluations");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    if (rc != LOOM_OK) {
        free(cv);
        free(rv);
        return rc;
    }
    *clients = cv;
    *res = rv;
    *n = cnt;
    return LOOM_OK;
}

/* ------------------------------------------------------------------ events */

void net_store_event(net_store *s, int round, const char *kind, const char *fmt, ...) {
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (round > 0) loom_log(LOOM_INFO, "round %d: %s: %s", round, kind, text);
    else loom_log(LOOM_INFO, "%s: %s", kind, text);
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    if (prepare(s, "INSERT INTO events(at, round, kind, text) VALUES (?, ?, ?, ?)", &st) == LOOM_OK) {
        sqlite3_bind_double(st, 1, wall());
        if (round > 0) sqlite3_bind_int(st, 2, round);
        else sqlite3_bind_null(st, 2);
        sqlite3_bind_text(st, 3, kind, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, text, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(st) != SQLITE_DONE) loom_log(LOOM_WARN, "%s: cannot log an event: %s", s->path, sqlite3_errmsg(s->db));
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------ unlearning */

int net_store_put_members(net_store *s, int round, const int *clients, const uint64_t *weights, int n) {
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = exec(s, "BEGIN IMMEDIATE");
    int began = rc == LOOM_OK;
    if (rc == LOOM_OK) rc = prepare(s, "DELETE FROM members WHERE round = ?", &st); /* a redone round */
    if (rc == LOOM_OK) {
        sqlite3_bind_int(st, 1, round);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "storing the round's members");
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc == LOOM_OK) rc = prepare(s, "INSERT INTO members(round, client, weight) VALUES (?, ?, ?)", &st);
    for (int i = 0; rc == LOOM_OK && i < n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int(st, 1, round);
        sqlite3_bind_int(st, 2, clients[i]);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)weights[i]);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "storing the round's members");
    }
    sqlite3_finalize(st);
    if (began) {
        if (rc == LOOM_OK) rc = exec(s, "COMMIT");
        else exec(s, "ROLLBACK");
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_first_member(net_store *s, int client, int *round) {
    *round = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT MIN(round) FROM members WHERE client = ?", &st);
    if (rc == LOOM_OK) {
        sqlite3_bind_int(st, 1, client);
        if (sqlite3_step(st) == SQLITE_ROW) *round = sqlite3_column_int(st, 0); /* NULL reads as 0: never */
        else rc = db_error(s, "reading members");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_removed(net_store *s, unsigned char *removed, int n) {
    memset(removed, 0, (size_t)n);
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT client FROM removed", &st), step;
    while (rc == LOOM_OK && (step = sqlite3_step(st)) == SQLITE_ROW) {
        int k = sqlite3_column_int(st, 0);
        if (k >= 0 && k < n) removed[k] = 1;
    }
    if (rc == LOOM_OK && step != SQLITE_DONE) rc = db_error(s, "reading removed clients");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int net_store_restart_without(net_store *s, int from_round, int client, const char *name, const char *copy_to) {
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "VACUUM INTO ?", &st); /* a consistent copy of the whole database */
    if (rc == LOOM_OK) {
        sqlite3_bind_text(st, 1, copy_to, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "copying the database");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    if (rc != LOOM_OK) return rc;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(copy_to, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        rc = loom_error(LOOM_EIO, "cannot open %s: %s", copy_to, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return rc;
    }
    /* the rounds from from_round on are redone; the client is removed and its token refused */
    char *sql = sqlite3_mprintf("BEGIN IMMEDIATE;"
                                "DELETE FROM rounds WHERE round >= %d; DELETE FROM sampled WHERE round >= %d;"
                                "DELETE FROM updates WHERE round >= %d; DELETE FROM evals WHERE round >= %d;"
                                "DELETE FROM members WHERE round >= %d;"
                                "INSERT OR REPLACE INTO removed(client, name, at) VALUES (%d, %Q, %f);"
                                "UPDATE clients SET revoked = 1 WHERE name = %Q;"
                                "INSERT INTO events(at, round, kind, text) VALUES (%f, 0, 'unlearn', "
                                "'client ' || %Q || ' removed: the run restarts at round %d');"
                                "COMMIT;",
                                from_round, from_round, from_round, from_round, from_round, client, name, wall(), name,
                                wall(), name, from_round);
    char *err = NULL;
    if (!sql) rc = loom_error(LOOM_ENOMEM, "out of memory");
    else if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        rc = loom_error(LOOM_EIO, "%s: %s", copy_to, err ? err : "error");
    sqlite3_free(err);
    sqlite3_free(sql);
    sqlite3_close(db);
    return rc;
}
