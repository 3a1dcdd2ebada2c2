/* Split learning, the client's side of the protocol (docs/protocol.md, "Split learning"): a step's
 * activations out and their gradient back, and the server side of the round's update. The bodies are
 * include/loom/split.h's; the connection and its retries are net/client.c's. */
#include <stdio.h>
#include <stdlib.h>

#include "loom/core.h"
#include "loom/net.h"
#include "loom/split.h"
#include "net/net_impl.h"

int loom_netclient_split_step(void *conn, int round, long step, int B, int T, int Tp, int C, const float *act,
                              size_t n, const int32_t *targets, float *dact, float *loss) {
    uint8_t *body = NULL;
    size_t len = 0;
    int rc = loom_split_encode_request(round, step, B, T, Tp, C, act, targets, &body, &len);
    if (rc != LOOM_OK) return rc;
    void *reply = NULL;
    size_t rlen = 0;
    rc = net_client_binary(conn, "POST", "/v1/split", body, len, LOOM_SPLIT_REPLY_HDR + 4 * n, &reply, &rlen);
    free(body);
    if (rc == LOOM_OK) rc = loom_split_decode_reply(reply, rlen, round, step, dact, n, loss);
    free(reply);
    return rc;
}

int loom_netclient_split_update(void *conn, int round, const uint8_t *side, float *upd, size_t dim) {
    char path[64];
    snprintf(path, sizeof path, "/v1/split?round=%d", round);
    void *reply = NULL;
    size_t rlen = 0;
    int rc = net_client_binary(conn, "GET", path, NULL, 0, LOOM_SPLIT_REPLY_HDR + 4 * dim, &reply, &rlen);
    if (rc == LOOM_OK) rc = loom_split_decode_update(reply, rlen, round, side, upd, dim);
    free(reply);
    return rc;
}
