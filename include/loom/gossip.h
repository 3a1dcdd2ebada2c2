/* Gossip averaging (fl/ layer): peers on a graph average their vectors with their neighbours', with no
 * server. Transport-free: one peer's step is "mix my vector with my neighbours' vectors"; who moves the
 * bytes (the decentralized simulator, include/loom/decentral.h, or a networked peer) is the caller's.
 *
 * Topologies (loom_topology): n peers 0..n-1 and their out-neighbours (the peers each one sends to) and
 * in-neighbours (those it receives from), each list sorted, without self-loops or repeated edges. An
 * undirected topology holds every edge both ways.
 *   ring        i -- i+1 (mod n); n = 2: one edge; n = 1: none
 *   kregular:K  a random K-regular simple graph drawn from the seed (stream LOOM_STREAM_GOSSIP_GRAPH):
 *               the circulant graph (i -- i +- 1..K/2, and i -- i + n/2 when K is odd) relabelled by a
 *               seeded permutation and randomised by 10 x edges degree-preserving double-edge swaps (each
 *               swap that would make a self-loop or a repeated edge is skipped). 1 <= K < n, n K even.
 *               A draw that comes out disconnected is redrawn (attempt a = 1, 2, ... under hash2(stream, a))
 *   full        every pair
 *   FILE        an edge list: one edge "A B" per line (peer ids 0..n-1), '#' starts a comment, blank lines
 *               are skipped; a first line "directed" makes every edge one-way A -> B (push-sum's graphs),
 *               otherwise edges are undirected. At most LOOM_TOPOLOGY_MAX_BYTES bytes; errors name the
 *               file and the line (an id out of range, a self-loop, a malformed line). A repeated edge
 *               is kept once.
 *
 * Mixing (Metropolis-Hastings, undirected graphs): W_ij = 1 / (1 + max(d_i, d_j)) for an edge ij, W_ii
 * = 1 - sum_j W_ij, 0 elsewhere (d = degree). W is symmetric and doubly stochastic with a positive
 * diagonal, so on a connected graph repeated mixing x <- W x converges geometrically to the exact
 * average (the rate is W's second largest eigenvalue modulus), and every step keeps the sum. On the
 * full graph W = (1/n) 1 1^T: one step is the plain mean.
 *
 * Push-sum (directed graphs; Kempe et al. 2003): each peer holds a value vector s_i and a weight w_i
 * (initially x_i and 1). In a step, peer j keeps and sends to each out-neighbour the share
 * 1 / (outdeg_j + 1) of both; peer i's new pair is the sum of what it receives (its own share included).
 * The mixing matrix is column stochastic, so sum_i s_i and sum_i w_i are kept, and on a strongly connected
 * graph the ratio s_i / w_i converges to the average of the x_i. A node needs out-degree >= 1 only for
 * the others to hear it; strong connectivity is what convergence needs.
 *
 * Sums run over j in increasing order in double precision, so a step is deterministic and independent of
 * how peers are spread over threads. */
#ifndef LOOM_GOSSIP_H
#define LOOM_GOSSIP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_TOPOLOGY_MAX_BYTES (64u << 20) /* an edge-list file */
#define LOOM_TOPOLOGY_MAX_PEERS 10000000

typedef struct loom_topology loom_topology;

int loom_topology_ring(loom_topology **t, int n);
int loom_topology_full(loom_topology **t, int n);
int loom_topology_kregular(loom_topology **t, int n, int k, uint64_t seed);
/* The edge list in path for n peers (the format above). */
int loom_topology_load(loom_topology **t, const char *path, int n);
/* From edges (a[e], b[e]), e < m; directed: one-way a -> b. Ids must be in [0, n), no self-loops. */
int loom_topology_from_edges(loom_topology **t, int n, const int *a, const int *b, size_t m, int directed);
/* "ring", "full", "kregular:K", or else a file name. Errors name `flag` (e.g. "--topology"). */
int loom_topology_parse(loom_topology **t, const char *spec, int n, uint64_t seed, const char *flag);
void loom_topology_free(loom_topology *t); /* accepts NULL */

int loom_topology_n(const loom_topology *t);
/* 1 when some edge has no reverse edge. */
int loom_topology_directed(const loom_topology *t);
/* Peer i's out-neighbours (sorted): *count of them. */
const int *loom_topology_out(const loom_topology *t, int i, int *count);
/* Peer i's in-neighbours (sorted). */
const int *loom_topology_in(const loom_topology *t, int i, int *count);
size_t loom_topology_edges(const loom_topology *t); /* directed edges (an undirected edge counts twice) */
/* LOOM_OK when every peer reaches every other along out-edges (strongly connected; for an undirected
 * graph: connected); otherwise LOOM_EINVAL with a message giving the number of components (undirected)
 * or a peer that peer 0 cannot reach (or that cannot reach peer 0). */
int loom_topology_check_connected(const loom_topology *t);

/* The Metropolis-Hastings mixing matrix of an undirected topology, as sparse rows: row i holds W_ii and
 * W_ij for its neighbours j. A directed topology: LOOM_EINVAL (use push-sum). */
typedef struct loom_mixing loom_mixing;
int loom_mixing_metropolis(const loom_topology *t, loom_mixing **w);
void loom_mixing_free(loom_mixing *w);
/* W_ij (0 when j is neither i nor a neighbour). */
double loom_mixing_weight(const loom_mixing *w, int i, int j);
/* Row i: *count entries, peers cols[k] (increasing, i itself included) with weights vals[k]. */
void loom_mixing_row(const loom_mixing *w, int i, const int **cols, const double **vals, int *count);

/* Peer i's gossip step: out = sum_j W_ij x[j] over row i (dim values; x[j] is read only for the peers
 * of row i, the others may be NULL; out may not alias any x[j]). */
int loom_gossip_mix(const loom_mixing *w, int i, const float *const *x, size_t dim, float *out);

/* Peer i's push-sum step: s_out = sum_{j in in(i) + i} s[j] / (outdeg_j + 1), *w_out likewise over w
 * (s[j], w[j] read only for i and its in-neighbours). */
int loom_pushsum_mix(const loom_topology *t, int i, const double *const *s, const double *w, size_t dim,
                     double *s_out, double *w_out);

/* Consensus distance: (1/n) sum_i ||x_i - xbar||^2 with xbar the average (written to mean when not NULL). */
double loom_consensus_distance(const float *const *x, int n, size_t dim, float *mean);

#ifdef __cplusplus
}
#endif
#endif
