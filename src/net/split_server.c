/* Split learning, the server's side of the protocol (docs/protocol.md, "Split learning"): POST /v1/split
 * (a step: the client's activations in, their gradient out) and GET /v1/split?round=R (the server side of
 * the client's update). The transport checks who may ask (a client sampled in the open synchronous round
 * that has not answered it) and moves the bytes; the training is the callbacks' (the CLI gives
 * loom_split_server's, include/loom/split.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "net/server_impl.h"

void net_split_handle(net_server *s, const net_request *q, int k, net_response *r) {
    const loom_server_config *c = &s->c;
    if (!c->split_step || !c->split_update) {
        net_reply_err(r, 404, "not_found", "this run does not use split learning");
        return;
    }
    int post = !strcmp(q->method, "POST");
    long want = -1;
    if (!post) {
        char *end = NULL;
        errno = 0;
        want = q->arg_round ? strtol(q->arg_round, &end, 10) : -1;
        if (!q->arg_round || errno || *end || want < 1) {
            net_reply_err(r, 400, "bad_request", "GET /v1/split needs ?round=R (a round number)");
            return;
        }
    }
    if (post && q->len > c->split_max_body) {
        net_reply_err(r, 413, "too_large", "the split request of %zu bytes exceeds the %zu-byte limit", q->len,
                      c->split_max_body);
        return;
    }
    float *global = NULL;
    pthread_mutex_lock(&s->mu);
    int round = s->round, ok = !s->async && s->phase == NET_PH_FIT && round > 0;
    int sampled = ok && s->spos[k] >= 0, answered = ok && s->ans[k] != 0;
    if (!post && ok && round != want) ok = 0;
    if (ok && sampled && !answered && post) { /* the round's global, as its step 0 needs it */
        global = loom_alloc(s->dim * sizeof(float));
        if (global) memcpy(global, loom_engine_global(s->eng), s->dim * sizeof(float));
    }
    pthread_mutex_unlock(&s->mu);
    if (!ok) {
        net_reply_err(r, 410, "stale", "no synchronous round is open for split steps%s", s->async ? " (an asynchronous run)" : "");
        return;
    }
    if (!sampled) {
        net_reply_err(r, 412, "not_sampled", "client %d is not sampled in round %d", k, round);
        return;
    }
    if (answered) {
        net_reply_err(r, 409, "duplicate", "client %d already answered round %d", k, round);
        return;
    }
    void *reply = NULL;
    size_t rlen = 0;
    int status = 500, rc;
    if (post) {
        if (!global) {
            net_reply_err(r, 503, "busy", "out of memory for a split step");
            return;
        }
        rc = c->split_step(c->split_ud, k, round, global, q->body, q->len, &reply, &rlen, &status);
    } else {
        rc = c->split_update(c->split_ud, k, round, &reply, &rlen, &status);
    }
    loom_free(global);
    if (rc != LOOM_OK) {
        free(reply);
        const char *code = status == 400 ? "bad_request" : status == 409 ? "out_of_order" : status == 410 ? "stale"
                         : status == 422 ? "rejected" : "server_error";
        net_reply_err(r, status, code, "%s", loom_errmsg());
        return;
    }
    r->status = 200;
    r->ctype = "application/octet-stream";
    r->body = reply;
    r->len = rlen;
}
