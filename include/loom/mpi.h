/* MPI for loom sim --mpi (src/mpi/mpi.c; OpenMPI or any MPI-3 library found by CMake at build time).
 *
 *     mpirun -np P loom sim --mpi ...
 *
 * runs one simulation over P processes: each runs the same configuration, trains and evaluates the
 * clients k with k mod P = its rank, and the round's exact fixed-point sums are added up between the
 * processes by loom_mpi_sum (MPI_Allreduce, MPI_SUM over MPI_INT64_T: integer addition, exact in any
 * order and any reduction tree), so every process finishes the strategy step on the same sum and
 * holds the same global vector; rank 0 writes the run directory. The result is the one-process run's,
 * bit for bit (include/loom/sim.h, loom_sim_config.dist; include/loom/engine.h, "a round shared by
 * several processes").
 *
 * Nothing here runs unless asked: loom without --mpi never calls MPI_Init and needs no mpirun. A
 * build without MPI keeps these calls, which then fail with LOOM_EUNSUPPORTED. Calls come from the
 * main thread only (MPI_THREAD_FUNNELED is enough; the workers never touch MPI). */
#ifndef LOOM_MPI_H
#define LOOM_MPI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when loom was built with MPI. */
int loom_mpi_available(void);
/* MPI_Init (once), then this process's rank and the number of processes. */
int loom_mpi_init(int *rank, int *size);
/* MPI_Finalize after a successful init (nothing otherwise). */
void loom_mpi_finalize(void);
/* Ends every process of the run (MPI_Abort with exit code code): a process that fails while the
 * others wait in a sum. */
void loom_mpi_abort(int code);
/* The element-wise sum of words[0..n) over every process, in place on every process
 * (MPI_Allreduce; in pieces of at most 2^26 words). ud is unused (the sim's dist.sum signature). */
int loom_mpi_sum(void *ud, int64_t *words, size_t n);

/* What the sums moved in this process since init: calls, 64-bit words reduced (bytes = 8 x words,
 * each way), and the seconds spent inside MPI_Allreduce. */
typedef struct {
    uint64_t calls, words;
    double seconds;
} loom_mpi_stats;
void loom_mpi_get_stats(loom_mpi_stats *s);

#ifdef __cplusplus
}
#endif
#endif
