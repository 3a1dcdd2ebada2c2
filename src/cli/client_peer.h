/* loom client --peers FILE: a peer of a decentralized federation (include/loom/peer.h). */
#ifndef LOOM_CLI_CLIENT_PEER_H
#define LOOM_CLI_CLIENT_PEER_H

typedef struct {
    const char *peers, *name, *token, *config, *data, *model, *work_dir, *listen, *tls_cert, *tls_key, *out;
    int threads;
    double give_up;
    volatile int *stop;
} cli_peer_args;

/* Runs the peer; 0, or 1 after printing the error (prefix "loom client: "). */
int cli_client_peer(const cli_peer_args *a);

#endif
