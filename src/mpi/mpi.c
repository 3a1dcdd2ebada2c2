/* MPI for loom sim --mpi (see include/loom/mpi.h). */
#include "loom/mpi.h"

#include <stdio.h>
#include <string.h>

#include "loom/core.h"

static loom_mpi_stats stats;

void loom_mpi_get_stats(loom_mpi_stats *s) { *s = stats; }

#ifdef LOOM_HAVE_MPI
#include <mpi.h>

static int inited;

int loom_mpi_available(void) { return 1; }

static int mpi_fail(int err, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error %d", err);
    return loom_error(LOOM_EIO, "%s: %.*s", what, len, msg);
}

int loom_mpi_init(int *rank, int *size) {
    int err;
    if (!inited) {
        int provided = 0;
        if ((err = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS)
            return mpi_fail(err, "MPI_Init");
        inited = 1;
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        memset(&stats, 0, sizeof stats);
    }
    if ((err = MPI_Comm_rank(MPI_COMM_WORLD, rank)) != MPI_SUCCESS) return mpi_fail(err, "MPI_Comm_rank");
    if ((err = MPI_Comm_size(MPI_COMM_WORLD, size)) != MPI_SUCCESS) return mpi_fail(err, "MPI_Comm_size");
    return LOOM_OK;
}

void loom_mpi_finalize(void) {
    if (inited) MPI_Finalize();
    inited = 0;
}

void loom_mpi_abort(int code) {
    if (inited) MPI_Abort(MPI_COMM_WORLD, code);
}

int loom_mpi_sum(void *ud, int64_t *words, size_t n) {
    (void)ud;
    if (!inited) return loom_error(LOOM_ESTATE, "MPI sum before loom_mpi_init");
    double t0 = MPI_Wtime();
    const size_t piece = (size_t)1 << 26; /* MPI counts are ints */
    for (size_t off = 0; off < n; off += piece) {
        int cnt = (int)(n - off < piece ? n - off : piece);
        int err = MPI_Allreduce(MPI_IN_PLACE, words + off, cnt, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS) return mpi_fail(err, "MPI_Allreduce");
    }
    stats.calls++;
    stats.words += n;
    stats.seconds += MPI_Wtime() - t0;
    return LOOM_OK;
}

#else /* built without MPI */

int loom_mpi_available(void) { return 0; }

int loom_mpi_init(int *rank, int *size) {
    *rank = 0;
    *size = 1;
    return loom_error(LOOM_EUNSUPPORTED, "this loom was built without MPI (install libopenmpi-dev and rebuild)");
}

void loom_mpi_finalize(void) {}
void loom_mpi_abort(int code) { (void)code; }

int loom_mpi_sum(void *ud, int64_t *words, size_t n) {
    (void)ud, (void)words, (void)n;
    return loom_error(LOOM_EUNSUPPORTED, "this loom was built without MPI");
}

#endif
