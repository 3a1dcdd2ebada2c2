/* loom's GEMM over oneDNN's matmul primitive (kernels/ layer).
 *
 * C[M, N] = alpha * op(A)[M, K] op(B)[K, N] + beta * C, row-major, f32 output and accumulation, each
 * operand f32 or bf16. The rows of C are cut into chunks of a fixed size (chunk_rows: a function of
 * the shape only, never of the thread count); each chunk is one single-threaded oneDNN matmul, and the
 * chunks run in an OpenMP loop (a product of few rows is also cut into column blocks of a fixed width;
 * a long K with B stored [K, N] into blocks of K, one product each, added in order).
 * A primitive is created with OpenMP's thread limit set to 1, so oneDNN
 * never splits a chunk's K sum between threads; every element of C is therefore one fixed computation
 * whichever thread runs its chunk, and C is the same bits for any thread count.
 *
 * Primitives are cached per (types, transposes, chunk shape, leading dimensions, alpha, beta) in a
 * bounded cache under a mutex; an entry in use is never evicted (reference count). Scratchpads are the
 * caller's (user scratchpad mode), one per thread and call, so concurrent calls share nothing mutable.
 * If oneDNN cannot build a primitive (a CPU without the kernel, out of memory) the product falls back
 * to BLAS sgemm, chunk by chunk (bf16 operands expanded to float first): slower, still correct. */
#include "loom/kernels.h"

#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/half.h"

#define CACHE_CAP 512

typedef struct {
    int ta, tb, at, bt;    /* transposes, operand types (LOOM_GEMM_*) */
    int M, N, K;           /* the chunk's shape */
    long lda, ldb, ldc;
    float alpha, beta;     /* beta: 0 or the sum post-op's scale */
} gemm_key;

typedef struct {
    gemm_key key;
    uint64_t hash;
    dnnl_primitive_t prim;
    size_t scratch;        /* bytes of user scratchpad */
    int refs;
    int owned; /* not in the cache: the caller destroys it (set once, before it is shared with no one) */
    uint64_t used;         /* last use (a counter), for eviction */
    int failed;            /* oneDNN refused this shape: use the fallback */
} gemm_entry;

static struct {
    pthread_mutex_t mu;
    gemm_entry e[CACHE_CAP];
    int n;
    uint64_t clock;
    dnnl_engine_t engine;
    int engine_failed;
} g_cache = {.mu = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void engine_init(void) {
    if (dnnl_engine_create(&g_cache.engine, dnnl_cpu, 0) != dnnl_success) g_cache.engine_failed = 1;
}

static uint64_t key_hash(const gemm_key *k) {
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static dnnl_data_type_t dt_of(int t) { return t == LOOM_GEMM_BF16 ? dnnl_bf16 : dnnl_f32; }

/* Builds the single-threaded primitive of one chunk shape; NULL where oneDNN has none. */
static dnnl_primitive_t build(const gemm_key *k, size_t *scratch) {
    dnnl_memory_desc_t a, b, c;
    dnnl_dims_t ad = {k->M, k->K}, bd = {k->K, k->N}, cd = {k->M, k->N};
    dnnl_dims_t as = {k->ta ? 1 : k->lda, k->ta ? k->lda : 1};
    dnnl_dims_t bs = {k->tb ? 1 : k->ldb, k->tb ? k->ldb : 1};
    dnnl_dims_t cs = {k->ldc, 1};
    if (dnnl_memory_desc_init_by_strides(&a, 2, ad, dt_of(k->at), as) != dnnl_success ||
        dnnl_memory_desc_init_by_strides(&b, 2, bd, dt_of(k->bt), bs) != dnnl_success ||
        dnnl_memory_desc_init_by_strides(&c, 2, cd, dnnl_f32, cs) != dnnl_success)
        return NULL;
    dnnl_matmul_desc_t md;
    if (dnnl_matmul_desc_init(&md, &a, &b, NULL, &c) != dnnl_success) return NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    int ok = dnnl_primitive_attr_create(&attr) == dnnl_success &&
             dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) == dnnl_success;
    if (ok && k->alpha != 1.0f) ok = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &k->alpha) == dnnl_success;
    if (ok && k->beta != 0.0f) {
        ok = dnnl_post_ops_create(&po) == dnnl_success && dnnl_post_ops_append_sum(po, k->beta) == dnnl_success &&
             dnnl_primitive_attr_set_post_ops(attr, po) == dnnl_success;
    }
    /* oneDNN sizes its work split by OpenMP's thread limit when the primitive is made: one thread */
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    if (ok) ok = dnnl_primitive_desc_create(&pd, &md, attr, g_cache.engine, NULL) == dnnl_success;
    if (ok) ok = dnnl_primitive_create(&prim, pd) == dnnl_success;
    omp_set_num_threads(saved);
    *scratch = 0;
    if (ok) {
        const dnnl_memory_desc_t *sd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        *scratch = sd ? dnnl_memory_desc_get_size(sd) : 0;
    }
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (!ok && prim) {
        dnnl_primitive_destroy(prim);
        prim = NULL;
    }
    return prim;
}

/* The cache entry of k with a reference taken (release with release()); NULL: no primitive. */
static gemm_entry *acquire(const gemm_key *k) {
    pthread_once(&g_once, engine_init);
    if (g_cache.engine_failed) return NULL;
    uint64_t h = key_hash(k);
    pthread_mutex_lock(&g_cache.mu);
    for (int i = 0; i < g_cache.n; i++) {
        gemm_entry *e = &g_cache.e[i];
        if (e->hash == h && !memcmp(&e->key, k, sizeof *k)) {
            e->used = ++g_cache.clock;
            gemm_entry *r = e->failed ? NULL : e;
            if (r) r->refs++;
            pthread_mutex_unlock(&g_cache.mu);
            return r;
        }
    }
    /* build under the lock: creation is rare (once per shape) and two threads never build one twice */
    size_t scratch = 0;
    dnnl_primitive_t prim = build(k, &scratch);
    int slot = g_cache.n;
    if (slot == CACHE_CAP) { /* evict the least recently used entry not in use */
        slot = -1;
        for (int i = 0; i < CACHE_CAP; i++)
            if (!g_cache.e[i].refs && (slot < 0 || g_cache.e[i].used < g_cache.e[slot].used)) slot = i;
        if (slot >= 0 && g_cache.e[slot].prim) dnnl_primitive_destroy(g_cache.e[slot].prim);
    } else {
        g_cache.n++;
    }
    gemm_entry *r = NULL;
    if (slot >= 0) {
        gemm_entry *e = &g_cache.e[slot];
        memset(e, 0, sizeof *e);
        e->key = *k;
        e->hash = h;
        e->prim = prim;
        e->scratch = scratch;
        e->failed = prim == NULL;
        e->used = ++g_cache.clock;
        if (prim) {
            e->refs = 1;
            r = e;
        }
    } else if (prim) {
        /* every entry is in use: a cache of CACHE_CAP shapes in flight at once cannot happen in loom,
         * but stay correct: run uncached */
        r = calloc(1, sizeof *r);
        if (r) {
            r->key = *k;
            r->prim = prim;
            r->scratch = scratch;
            r->refs = -1; /* owned by the caller */
            r->owned = 1;
        } else {
            dnnl_primitive_destroy(prim);
        }
    }
    pthread_mutex_unlock(&g_cache.mu);
    return r;
}

static void release(gemm_entry *e) {
    if (!e) return;
    if (e->owned) {
        dnnl_primitive_destroy(e->prim);
        free(e);
        return;
    }
    pthread_mutex_lock(&g_cache.mu);
    e->refs--;
    pthread_mutex_unlock(&g_cache.mu);
}

void loom_gemm_cache_clear(void) {
    pthread_mutex_lock(&g_cache.mu);
    int k = 0;
    for (int i = 0; i < g_cache.n; i++) {
        if (g_cache.e[i].refs) {
            g_cache.e[k++] = g_cache.e[i];
        } else if (g_cache.e[i].prim) {
            dnnl_primitive_destroy(g_cache.e[i].prim);
        }
    }
    g_cache.n = k;
    pthread_mutex_unlock(&g_cache.mu);
}

int loom_gemm_cache_size(void) {
    pthread_mutex_lock(&g_cache.mu);
    int n = g_cache.n;
    pthread_mutex_unlock(&g_cache.mu);
    return n;
}

/* ---------------------------------------------------------------- chunks */

/* Rows of C per chunk: a function of the shape alone. 128 rows give 6-8 chunks at GPT-2's 768 and
 * 1024 (two threads stay balanced) while each chunk is large enough that oneDNN's own packing of B
 * stays a small share of its work; taller products take 256. When C must be staged (ldc != N) the
 * chunk is capped at 2^20 floats of C. */
#define COL_BLOCK 256

/* With B stored [K, N], a long K is cut into blocks, one product per block added onto C in block order
 * (the cut a function of K and the types alone). Measured on 2 threads (Zen 5), M = 1024, N = 768:
 * oneDNN's f32 kernel over a whole K of 2048, 3072 or 50257 ran at 60-85% of its rate on 1024-long
 * blocks; its bf16 kernel lost on K = 3072 cut that way but gained about 10% on K = 50257 cut into
 * 2048-long blocks. With B stored [N, K] a long K already ran at full rate. */
#define K_BLOCK_F32 1024  /* f32 (either operand): K > 1024 in blocks of at most 1024 */
#define K_SPLIT_BF16 8192 /* bf16 operands: K > 8192 ... */
#define K_BLOCK_BF16 2048 /* ... in blocks of at most 2048 */

static int chunk_rows(int M, int N, int c_staged) {
    int tm = M >= 4096 ? 256 : 128;
    if (c_staged) {
        int cap = (1 << 20) / N;
        if (cap < 16) cap = 16;
        if (tm > cap) tm = cap;
    }
    return tm < M ? tm : M;
}

static size_t esize(int t) { return t == LOOM_GEMM_BF16 ? 2 : 4; }

/* rows x cols elements of es bytes from src (row stride lds) to dst (row stride ldd). */
static void copy_rows(void *dst, size_t ldd, const void *src, size_t lds, size_t rows, size_t cols, size_t es) {
    for (size_t r = 0; r < rows; r++) memcpy((char *)dst + r * ldd * es, (const char *)src + r * lds * es, cols * es);
}

/* The dense float copy of a rows x cols block with row stride ld. */
static float *expand(const void *x, int type, int rows, int cols, int ld) {
    float *d = loom_alloc((size_t)rows * cols * sizeof(float) + 1);
    if (!d) return NULL;
    for (int r = 0; r < rows; r++) {
        if (type == LOOM_GEMM_BF16) loom_bf16_to_f32_n(d + (size_t)r * cols, (const uint16_t *)x + (size_t)r * ld, (size_t)cols);
        else memcpy(d + (size_t)r * cols, (const float *)x + (size_t)r * ld, (size_t)cols * sizeof(float));
    }
    return d;
}

/* The BLAS route, for a chunk oneDNN could not run. */
static void fallback(int ta, int tb, int M, int N, int K, float alpha, const void *A, int at, int lda, const void *B,
                     int bt, int ldb, float beta, float *C, int ldc) {
    if (at == LOOM_GEMM_F32 && bt == LOOM_GEMM_F32) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                    lda, B, ldb, beta, C, ldc);
        return;
    }
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    float *ax = expand(A, at, ar, ac, lda), *bx = expand(B, bt, br, bc, ldb);
    if (ax && bx)
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, ax,
                    ac, bx, bc, beta, C, ldc);
    loom_free(ax);
    loom_free(bx);
}

static int exec_chunk(const gemm_entry *e, dnnl_stream_t st, void *scratch, const void *a, const void *b, float *c) {
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, ms = NULL;
    const dnnl_memory_desc_t *ad = NULL, *bd = NULL, *cd = NULL, *sd = NULL;
    const_dnnl_primitive_desc_t pd;
    int ok = dnnl_primitive_get_primitive_desc(e->prim, &pd) == dnnl_success;
    if (ok) {
        ad = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        bd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        cd = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        sd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        ok = ad && bd && cd;
    }
    ok = ok && dnnl_memory_create(&ma, ad, g_cache.engine, (void *)a) == dnnl_success &&
         dnnl_memory_create(&mb, bd, g_cache.engine, (void *)b) == dnnl_success &&
         dnnl_memory_create(&mc, cd, g_cache.engine, c) == dnnl_success;
    if (ok && e->scratch) ok = dnnl_memory_create(&ms, sd, g_cache.engine, scratch) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc},
                                   {DNNL_ARG_SCRATCHPAD, ms}};
        ok = dnnl_primitive_execute(e->prim, st, e->scratch ? 4 : 3, args) == dnnl_success;
    }
    if (ma) dnnl_memory_destroy(ma);
    if (mb) dnnl_memory_destroy(mb);
    if (mc) dnnl_memory_destroy(mc);
    if (ms) dnnl_memory_destroy(ms);
    return ok;
}

/* oneDNN's fast kernels (brgemm) take dense operands only: a strided operand is copied dense first
 * (B once per call, a chunk of A or C per chunk), which costs a small fraction of the product. */
int loom_gemm(int ta, int tb, int M, int N, int K, float alpha, const void *A, int atype, int lda, const void *B,
              int btype, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return LOOM_OK;
    if (M > (1 << 30) || N > (1 << 30) || K < 0 || K > (1 << 30))
        return loom_error(LOOM_EINVAL, "gemm of %d x %d x %d is out of range", M, N, K);
    if (ldc < N || (K && (lda < (ta ? M : K) || ldb < (tb ? K : N))))
        return loom_error(LOOM_EINVAL, "gemm leading dimensions lda %d, ldb %d, ldc %d are too short for %d x %d x %d", lda,
                          ldb, ldc, M, N, K);
    if (K == 0) { /* C = beta C (BLAS semantics: beta 0 overwrites) */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return LOOM_OK;
    }
    ta = ta != 0;
    tb = tb != 0;
    const size_t ae = esize(atype), be = esize(btype);
    const int bf16 = atype == LOOM_GEMM_BF16 && btype == LOOM_GEMM_BF16;
    if (!tb && K > (bf16 ? K_SPLIT_BF16 : K_BLOCK_F32)) { /* K in equal blocks (multiples of 16, the last shorter) */
        const int blk = bf16 ? K_BLOCK_BF16 : K_BLOCK_F32, nb = (K + blk - 1) / blk, kb = ((K + nb - 1) / nb + 15) & ~15;
        for (int k0 = 0; k0 < K; k0 += kb) {
            const int kk = K - k0 < kb ? K - k0 : kb;
            const char *a = (const char *)A + (ta ? (size_t)k0 * lda : (size_t)k0) * ae;
            const char *b = (const char *)B + (size_t)k0 * ldb * be;
            int rc = loom_gemm(ta, 0, M, N, kk, alpha, a, atype, lda, b, btype, ldb, k0 ? 1.0f : beta, C, ldc);
            if (rc != LOOM_OK) return rc;
        }
        return LOOM_OK;
    }
    /* rows in chunks; a short product (fewer than 4 row chunks) of a wide C also in column blocks of
     * COL_BLOCK, so that it still spreads over the threads */
    const int split_n = (M + 127) / 128 < 4 && N >= 2 * COL_BLOCK;
    const int tn = split_n ? COL_BLOCK : N, nn = (N + tn - 1) / tn, lastn = N - (nn - 1) * tn;
    const int c_staged = split_n || ldc != N;
    const int tm = chunk_rows(M, tn, c_staged), nm = (M + tm - 1) / tm, last = M - (nm - 1) * tm;
    /* an A chunk is dense as it lies when its rows are rows of A with lda = K, or it is all of A^T */
    const int a_staged = ta ? !(nm == 1 && lda == M) : lda != K;
    /* B whole (no column blocks) is copied dense once; a column block of a stored [N, K] B is dense as
     * it lies when ldb = K, of a stored [K, N] B never */
    const int b_staged_all = !split_n && (tb ? ldb != K : ldb != N);
    const int b_staged_blk = split_n && (tb ? ldb != K : 1);
    gemm_entry *ent[2][2] = {{NULL, NULL}, {NULL, NULL}};
    int ok = 1;
    size_t scratch = 0;
    for (int i = 0; i < 2 && ok; i++)
        for (int j = 0; j < 2 && ok; j++) {
            if ((i && (nm == 1 || last == tm)) || (j && (nn == 1 || lastn == tn))) continue;
            int rows = i ? last : tm, cols = j ? lastn : tn;
            gemm_key k;
            memset(&k, 0, sizeof k);
            k.ta = ta;
            k.tb = tb;
            k.at = atype;
            k.bt = btype;
            k.M = rows;
            k.N = cols;
            k.K = K;
            k.lda = ta ? rows : K;
            k.ldb = tb ? K : cols;
            k.ldc = cols;
            k.alpha = alpha;
            k.beta = beta;
            ent[i][j] = acquire(&k);
            ok = ent[i][j] != NULL;
            if (ok && ent[i][j]->scratch > scratch) scratch = ent[i][j]->scratch;
        }
    const void *Bd = B;
    void *bbuf = NULL;
    if (ok && b_staged_all) {
        size_t br = tb ? N : K, bc = tb ? K : N;
        bbuf = loom_alloc(br * bc * be + 1);
        if (bbuf) {
#pragma omp parallel for schedule(static) if (br * bc >= 65536)
            for (size_t r = 0; r < br; r++) copy_rows((char *)bbuf + r * bc * be, bc, (const char *)B + r * ldb * be, (size_t)ldb, 1, bc, be);
        }
        Bd = bbuf;
        ok = bbuf != NULL;
    }
    const size_t abytes = a_staged ? (size_t)tm * K * ae : 0, cbytes = c_staged ? (size_t)tm * tn * sizeof(float) : 0;
    const size_t bbytes = b_staged_blk ? (size_t)tn * K * be : 0;
    const long ntiles = (long)nm * nn;
    const int par = ntiles > 1;
    int saved = omp_get_max_threads();
    if (!par) omp_set_num_threads(1); /* the lone tile runs on this thread, oneDNN alone inside it */
#pragma omp parallel if (par)
    {
        dnnl_stream_t st = NULL;
        void *sp = ok && scratch ? loom_alloc(scratch) : NULL;
        void *abuf = ok && abytes ? loom_alloc(abytes) : NULL;
        void *bblk = ok && bbytes ? loom_alloc(bbytes) : NULL;
        float *cbuf = ok && cbytes ? loom_alloc(cbytes) : NULL;
        int ready = ok && (!scratch || sp) && (!abytes || abuf) && (!bbytes || bblk) && (!cbytes || cbuf) &&
                    dnnl_stream_create(&st, g_cache.engine, dnnl_stream_default_flags) == dnnl_success;
#pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < ntiles; t++) {
            int bi = (int)(t / nn), bj = (int)(t % nn);
            size_t m0 = (size_t)bi * tm, n0 = (size_t)bj * tn;
            int rows = bi == nm - 1 ? last : tm, cols = bj == nn - 1 ? lastn : tn;
            const char *a = (const char *)A + (ta ? m0 : m0 * (size_t)lda) * ae;
            const char *b = (const char *)B + (tb ? n0 * (size_t)ldb : n0) * be;
            float *c = C + m0 * (size_t)ldc + n0;
            int done = 0;
            if (ready) {
                const void *ad = a, *bd = split_n ? (const void *)b : Bd;
                if (a_staged) {
                    if (ta) copy_rows(abuf, (size_t)rows, a, (size_t)lda, (size_t)K, (size_t)rows, ae); /* [K, rows] */
                    else copy_rows(abuf, (size_t)K, a, (size_t)lda, (size_t)rows, (size_t)K, ae);       /* [rows, K] */
                    ad = abuf;
                }
                if (b_staged_blk) {
                    if (tb) copy_rows(bblk, (size_t)K, b, (size_t)ldb, (size_t)cols, (size_t)K, be);    /* [cols, K] */
                    else copy_rows(bblk, (size_t)cols, b, (size_t)ldb, (size_t)K, (size_t)cols, be);    /* [K, cols] */
                    bd = bblk;
                }
                float *cd = c;
                if (c_staged) {
                    if (beta != 0.0f) copy_rows(cbuf, (size_t)cols, c, (size_t)ldc, (size_t)rows, (size_t)cols, sizeof(float));
                    cd = cbuf;
                }
                /* the tile's memory objects are made before it runs: it runs whole or not at all, so
                 * the fallback never adds a product twice */
                done = exec_chunk(ent[bi == nm - 1 && last != tm][bj == nn - 1 && lastn != tn], st, sp, ad, bd, cd);
                if (done && c_staged) copy_rows(c, (size_t)ldc, cbuf, (size_t)cols, (size_t)rows, (size_t)cols, sizeof(float));
            }
            if (!done) fallback(ta, tb, rows, cols, K, alpha, a, atype, lda, b, btype, ldb, beta, c, ldc);
        }
        if (st) dnnl_stream_destroy(st);
        loom_free(sp);
        loom_free(abuf);
        loom_free(bblk);
        loom_free(cbuf);
    }
    if (!par) omp_set_num_threads(saved);
    loom_free(bbuf);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) release(ent[i][j]);
    return LOOM_OK;
}

void loom_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                float beta, float *C, int ldc) {
    loom_gemm(ta, tb, M, N, K, alpha, A, LOOM_GEMM_F32, lda, B, LOOM_GEMM_F32, ldb, beta, C, ldc);
}

void loom_sbgemm(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                 float beta, float *C, int ldc) {
    loom_gemm(ta, tb, M, N, K, alpha, A, LOOM_GEMM_BF16, lda, B, LOOM_GEMM_BF16, ldb, beta, C, ldc);
}

/* ---------------------------------------------------------------- CPU features */

int loom_cpu_has_bf16(void) {
    const char *off = getenv("LOOM_CPU_NO_BF16"); /* a CPU without it, for tests and comparisons */
    if (off && *off && strcmp(off, "0")) return 0;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}
