/* MLP d -> h -> k (ReLU, softmax, cross-entropy) training kernels in C, for _kernels.pyx.

   Why C with GCC vector types: the hot loops are small matrix products whose innermost axis
   is h or k (contiguous); written with GCC vector types (4 doubles, or 2 where only SSE2
   exists) they compile to AVX-512 (32 registers), AVX2 or SSE2 code from ONE source, chosen
   at run time by the CPU (mlcore_best_isa, _kernels.set_isa). Every vector operation is
   lane-wise IEEE +, -, *, / or a fused multiply-add written as such (FMA in _mlp_impl.h:
   the FMA3 instruction on AVX2 / AVX-512, the C library's correctly rounded fma() on SSE2;
   the compiler fuses nothing by itself: -ffp-contract=off, set in _kernels.pyx), and every
   sum runs in one fixed order written in the source, so all paths give the same bits. The
   path-specific parts are only the instruction set and the register tiling, never the
   arithmetic.

   The per-row work of a block of rows is fused: forward, softmax and backward run on block
   buffers that stay in L1, the weight gradients are added once per block, and the ReLU
   sparsity (about half the hidden units are off) is used through bit masks. The one body,
   _mlp_impl.h, is included once per instruction set. */
#ifndef MLCORE_MLP_H
#define MLCORE_MLP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MLCORE_X86 1
#include <immintrin.h>
#else
#define MLCORE_X86 0
#endif

/* v4d values never cross a non-inlined call boundary between paths: the ABI note is moot */
#pragma GCC diagnostic ignored "-Wpsabi"

#define MLCORE_ALWAYS_INLINE static inline __attribute__((always_inline))
#define MLCORE_BLOCK_MAX 64 /* rows per block: one bit each in a uint64_t column mask */
#define MLCORE_FORWARD_L1_BYTES (32 * 1024) /* w1 above this: forward blocks of 64 rows */

typedef double mlcore_v4d __attribute__((vector_size(32)));
typedef int64_t mlcore_v4di __attribute__((vector_size(32)));
typedef uint64_t mlcore_v4du __attribute__((vector_size(32)));
typedef double mlcore_v2d __attribute__((vector_size(16)));
typedef int64_t mlcore_v2di __attribute__((vector_size(16)));
typedef uint64_t mlcore_v2du __attribute__((vector_size(16)));
/* memory access types: aligned (all buffers are) and allowed to alias double */
typedef double mlcore_v4d_mem __attribute__((vector_size(32), aligned(32), may_alias));
typedef double mlcore_v2d_mem __attribute__((vector_size(16), aligned(16), may_alias));
/* the same, 8-byte aligned: the caller's w1 as the read-only passes read it in place */
typedef double mlcore_v4d_umem __attribute__((vector_size(32), aligned(8), may_alias));
typedef double mlcore_v2d_umem __attribute__((vector_size(16), aligned(8), may_alias));

/* ------------------------------------------------------------------ scalar exp (shared) */

/* exp(t), t in [-708, 0], as p * 2^k: the range reduction and polynomial the scalar exp
   below and the vector one in _mlp_impl.h share, token for token (so the same bits), on a
   double or a vector of doubles alike. kd keeps 1.5 * 2^52 + k, whose low bits the caller
   turns into 2^k. Estrin's scheme: a short dependency chain. */
#define MLCORE_EXP_REDUCED(t, magic, kd, k, r, r2, r4, r8, p)                              \
    kd = t * 1.4426950408889634 + magic;                                                  \
    k = kd - magic;                                                                       \
    r = (t - k * 0.693147180369123816490) - k * 1.90821492927058770002e-10;               \
    r2 = r * r;                                                                           \
    r4 = r2 * r2;                                                                         \
    r8 = r4 * r4;                                                                         \
    p = 1.0 + (r + ((0.5 + r * (1.0 / 6.0)) * r2                                          \
                    + ((1.0 / 24.0 + r * (1.0 / 120.0))                                   \
                       + (1.0 / 720.0 + r * (1.0 / 5040.0)) * r2) * r4                    \
                    + (((1.0 / 40320.0 + r * (1.0 / 362880.0))                            \
                        + (1.0 / 3628800.0 + r * (1.0 / 39916800.0)) * r2)                \
                       + (1.0 / 479001600.0 + r * (1.0 / 6227020800.0)) * r4) * r8))

/* exp(t) for t <= 0 (softmax arguments are logit - max) from +, -, * and a bit shift only,
   so the bits depend on IEEE-754 alone, not on the libm version or the CPU's libm code
   path. Cody-Waite reduction t = k ln2 + r, |r| <= ln2/2, then Taylor to r^13 (truncation
   < 1e-17 relative), then scale by 2^k built in the exponent bits. Needs t >= -708 (2^k
   stays normal): the clamp below. The vector version in _mlp_impl.h is the same formula
   lane by lane, so both give the same bits. */
static inline double mlcore_exp_nonpos(double t)
{
    const double magic = 6755399441055744.0; /* 1.5 * 2^52: x + magic rounds x */
    double kd, k, r, r2, r4, r8, p, scale;
    uint64_t bits;
    t = t < -708.0 ? -708.0 : t; /* exp(-708) ~ 3e-308 */
    MLCORE_EXP_REDUCED(t, magic, kd, k, r, r2, r4, r8, p);
    memcpy(&bits, &kd, sizeof bits); /* low bits of kd hold 2^51 + k */
    bits = (bits + 1023u) << 52;     /* exponent field k + 1023: 2^k */
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* ------------------------------------------------------------------------ the network */

/* Padded, aligned working copy of the model plus every buffer one kernel call needs, in one
   allocation. hp and kp are h and k rounded up to a multiple of 4; the padding holds exact
   zeros that stay zero (zero weights get zero gradients), so padded hidden units are never
   active and padded classes are masked out of the softmax.

   Memory (a 10M-parameter model is 82 MB; what is not allocated is never resident):
   * w1 (d x hp, nearly all of a wide model) is the caller's own array when h is a multiple
     of 4 (then the padded layout is the caller's layout) and it starts on a 32-byte
     boundary (the vector loads need it; mlcore.model gives training such a copy):
     training updates it in place, the read-only passes read it where it is. Otherwise a
     padded copy.
   * the gradients exist only where a call needs them (training, gradient()); the
     velocities only with momentum (v starts at 0 and mu = 0 makes v = g: w -= eta * g).
   * the FedProx anchor only with a proximal term: w1's is the caller's array of the
     starting weights, read in place when h is a multiple of 4 (mlcore.model passes the
     weights it was given, which training never writes), so it adds no second w1.
   * low rank: the step's w1 gradient is X^T D1 over the batch's rows (rank <= rows). When
     the batch's input rows and hidden deltas (rows x (d + hp)) are far smaller than gw1
     (d x hp), training keeps those and adds each element's products straight into the step,
     in the order gw1 would have summed them (the same bits), instead of a gw1 buffer.
   * one calloc: memory fresh from the OS is zero already and is not written up front. */
typedef struct {
    ptrdiff_t d, h, k, hp, kp, hw; /* hw: 64-bit words per row mask (ceil(hp / 64)) */
    ptrdiff_t block;               /* rows per block, <= MLCORE_BLOCK_MAX */
    int low_rank;                  /* w1's step from xr/x and d1 of the whole batch, no gw1 */
    double *w1, *b1, *w2, *b2;     /* (d, hp), (hp), (hp, kp), (kp); w1 maybe the caller's */
    double *w2t;                   /* (k, hp): w2 transposed, for d1 = d2 @ w2.T (NULL: no
                                      gradients) */
    double *gw1, *gb1, *gw2, *gb2; /* summed gradients, same layouts (NULL: not needed) */
    double *vw1, *vb1, *vw2, *vb2; /* momentum velocities, same layouts (NULL: no momentum) */
    /* FedProx anchor: the weights the call started from (the round's global weights), same
       layouts, for the proximal term prox * (w - anchor) (NULL: no proximal term). aw1 is
       the caller's own array when h is a multiple of 4 (read in place, any alignment), else
       a padded copy; the others are always padded copies. */
    const double *aw1;
    double *ab1, *aw2, *ab2;
    double *aw1_own;               /* the padded copy of aw1, when there is one */
    double *xb;                    /* (block, d) the block's input rows */
    double *xr;                    /* low rank, shuffled rows: (batch, d) the batch's rows */
    double *z1;                    /* (block, hp) hidden pre-activations */
    double *z2;                    /* (block, kp) logits -> probabilities -> p - onehot(y) */
    double *d1;                    /* (block, hp) hidden deltas, 0 at inactive units; low
                                      rank: (batch, hp), block after block */
    uint64_t *rowmask;             /* (block, hw) bit j: unit j active in that row */
    uint64_t *colmask;             /* (hp) bit r: unit active in block row r */
    int64_t *order;                /* (n) row order for shuffled mini-batches, or NULL */
    void *mem;
} mlcore_net;

/* What a call needs besides the weights and the forward buffers (mlcore_net_alloc's `need`). */
#define MLCORE_NEED_GRAD 1     /* gradients (gw1 unless low rank) and the backward buffers */
#define MLCORE_NEED_VELOCITY 2 /* momentum velocities */
#define MLCORE_NEED_LOW_RANK 4 /* w1's step from the batch's rows and deltas (training) */
#define MLCORE_NEED_PROX 8     /* the FedProx anchor (mlcore_net_load_anchor fills it) */

static inline ptrdiff_t mlcore_round4(ptrdiff_t v) { return (v + 3) & ~(ptrdiff_t)3; }

/* Whether training with batches of `rows` rows should take w1's step in low rank: the rows
   and deltas it keeps instead of gw1 are at most half of gw1's size. */
static inline int mlcore_low_rank_pays(ptrdiff_t d, ptrdiff_t h, ptrdiff_t rows)
{
    ptrdiff_t hp = mlcore_round4(h);
    return rows > 0 && 2 * (double)rows * (double)(d + hp) <= (double)d * (double)hp;
}

static inline void mlcore_net_free(mlcore_net *net)
{
    free(net->mem);
    net->mem = NULL;
}

/* Allocate everything for a (d, h, k) model and the call's `need` (MLCORE_NEED_*): n_order >
   0 reserves a row-order vector (shuffled mini-batches), batch_rows is the most rows of one
   step (low rank), and w1_own, if not NULL, is the caller's (d, h) w1 to work in when h is a
   multiple of 4 and w1_own 32-byte aligned (written only by training; the read-only passes,
   need 0, read any w1_own in place: the dense tiles load w1 unaligned). The read-only passes
   give batch_rows = n, their row count, so a call on a few rows allocates blocks of that
   many. Returns 0 on success, -1 when out of memory. */
static inline int mlcore_net_alloc(mlcore_net *net, ptrdiff_t d, ptrdiff_t h, ptrdiff_t k,
                                   int need, ptrdiff_t n_order, ptrdiff_t batch_rows,
                                   double *w1_own)
{
    ptrdiff_t hp = mlcore_round4(h), kp = mlcore_round4(k), hw = (hp + 63) / 64, blk;
    const int grad = (need & MLCORE_NEED_GRAD) != 0, vel = (need & MLCORE_NEED_VELOCITY) != 0;
    const int low_rank = grad && (need & MLCORE_NEED_LOW_RANK) && batch_rows > 0;
    const int prox = grad && (need & MLCORE_NEED_PROX);
    const int own_w1 = w1_own != NULL && hp == h && (need == 0 || (uintptr_t)w1_own % 32 == 0);
    size_t doubles, off = 0;
    double *base;
    char *raw;
    /* Block rows: enough to amortise the gradient loads and stores, few enough that the
       block buffers (z1, d1: block * hp doubles each) stay in L1 (measured: 32 rows up to
       h = 128; at h = 256 with FMA, 16 rows 13% faster than 8, 32 rows 7% faster (AMD
       Zen 4, 2026-11-29); 8 rows above). A forward pass alone (need 0) has no d1 and reads w1 once
       per block: a w1 larger than L1 takes the largest blocks, so it streams from memory
       once per 64 rows rather than once per 8 (a row's sums are the same in any block). */
    blk = hp <= 128 ? 32 : hp <= 256 ? 16 : 8;
    if (need == 0) {
        if (d * hp * 8 > MLCORE_FORWARD_L1_BYTES) blk = MLCORE_BLOCK_MAX;
        if (batch_rows > 0 && batch_rows < blk) blk = batch_rows;
    }
    net->d = d; net->h = h; net->k = k; net->hp = hp; net->kp = kp; net->hw = hw;
    net->block = blk;
    net->low_rank = low_rank;
#define MLCORE_SZ(v) ((((size_t)(v)) + 7) & ~(size_t)7) /* doubles, keeps 64-byte alignment */
    doubles = (own_w1 ? 0 : MLCORE_SZ(d * hp)) + MLCORE_SZ(hp) + MLCORE_SZ(hp * kp)
              + MLCORE_SZ(kp) + (grad ? MLCORE_SZ(k * hp) : 0) + MLCORE_SZ(blk * d)
              + MLCORE_SZ(blk * hp)
              + MLCORE_SZ(blk * kp) + MLCORE_SZ(blk * hw);
    if (grad)
        doubles += (low_rank ? 0 : MLCORE_SZ(d * hp)) + MLCORE_SZ(hp) + MLCORE_SZ(hp * kp)
                   + MLCORE_SZ(kp) + MLCORE_SZ(low_rank ? batch_rows * hp : blk * hp)
                   + MLCORE_SZ(hp) + MLCORE_SZ(n_order)
                   + (low_rank && n_order > 0 ? MLCORE_SZ(batch_rows * d) : 0);
    if (vel)
        doubles += MLCORE_SZ(d * hp) + MLCORE_SZ(hp) + MLCORE_SZ(hp * kp) + MLCORE_SZ(kp);
    if (prox) /* w1's anchor is the caller's own unless w1 is padded */
        doubles += (hp == h ? 0 : MLCORE_SZ(d * hp)) + MLCORE_SZ(hp) + MLCORE_SZ(hp * kp)
                   + MLCORE_SZ(kp);
    /* calloc: large blocks come zeroed from the OS (never written here, so pages a call
       does not use are never resident); 64 bytes more to align the start. */
    raw = (char *)calloc(doubles * sizeof(double) + 64, 1);
    if (raw == NULL) return -1;
    net->mem = raw;
    base = (double *)(raw + (64 - (uintptr_t)raw % 64) % 64);
#define MLCORE_TAKE(ptr, type, count) \
    do { ptr = (type *)(base + off); off += MLCORE_SZ(count); } while (0)
    if (own_w1) net->w1 = w1_own;
    else MLCORE_TAKE(net->w1, double, d * hp);
    MLCORE_TAKE(net->b1, double, hp);
    MLCORE_TAKE(net->w2, double, hp * kp);
    MLCORE_TAKE(net->b2, double, kp);
    if (grad) MLCORE_TAKE(net->w2t, double, k * hp);
    else net->w2t = NULL;
    MLCORE_TAKE(net->xb, double, blk * d);
    MLCORE_TAKE(net->z1, double, blk * hp);
    MLCORE_TAKE(net->z2, double, blk * kp);
    MLCORE_TAKE(net->rowmask, uint64_t, blk * hw);
    net->gw1 = net->gb1 = net->gw2 = net->gb2 = NULL;
    net->vw1 = net->vb1 = net->vw2 = net->vb2 = NULL;
    net->aw1 = NULL;
    net->ab1 = net->aw2 = net->ab2 = NULL;
    net->aw1_own = NULL;
    net->d1 = net->xr = NULL;
    net->colmask = NULL;
    net->order = NULL;
    if (grad) {
        if (!low_rank) MLCORE_TAKE(net->gw1, double, d * hp);
        MLCORE_TAKE(net->gb1, double, hp);
        MLCORE_TAKE(net->gw2, double, hp * kp);
        MLCORE_TAKE(net->gb2, double, kp);
        MLCORE_TAKE(net->d1, double, low_rank ? batch_rows * hp : blk * hp);
        MLCORE_TAKE(net->colmask, uint64_t, hp);
        if (n_order > 0) MLCORE_TAKE(net->order, int64_t, n_order);
        if (low_rank && n_order > 0) MLCORE_TAKE(net->xr, double, batch_rows * d);
    }
    if (vel) {
        MLCORE_TAKE(net->vw1, double, d * hp);
        MLCORE_TAKE(net->vb1, double, hp);
        MLCORE_TAKE(net->vw2, double, hp * kp);
        MLCORE_TAKE(net->vb2, double, kp);
    }
    if (prox) { /* filled by mlcore_net_load_anchor; aw1 stays NULL until then */
        if (hp != h) MLCORE_TAKE(net->aw1_own, double, d * hp);
        MLCORE_TAKE(net->ab1, double, hp);
        MLCORE_TAKE(net->aw2, double, hp * kp);
        MLCORE_TAKE(net->ab2, double, kp);
    }
#undef MLCORE_TAKE
#undef MLCORE_SZ
    return 0;
}

/* w2t = w2[:, :k] transposed (if the net has one); called whenever w2 changes. */
static inline void mlcore_net_transpose_w2(mlcore_net *net)
{
    ptrdiff_t j, c;
    if (net->w2t == NULL) return;
    for (c = 0; c < net->k; c++)
        for (j = 0; j < net->hp; j++) net->w2t[c * net->hp + j] = net->w2[j * net->kp + c];
}

/* Copy the caller's C-contiguous (d, h), (h), (h, k), (k) tensors in (padding stays 0); w1
   stays where it is when the net works in the caller's w1. */
static inline void mlcore_net_load(mlcore_net *net, const double *w1, const double *b1,
                                   const double *w2, const double *b2)
{
    ptrdiff_t i;
    if (net->w1 != w1)
        for (i = 0; i < net->d; i++)
            memcpy(net->w1 + i * net->hp, w1 + i * net->h, net->h * 8);
    memcpy(net->b1, b1, net->h * 8);
    for (i = 0; i < net->h; i++) memcpy(net->w2 + i * net->kp, w2 + i * net->k, net->k * 8);
    memcpy(net->b2, b2, net->k * 8);
    mlcore_net_transpose_w2(net);
}

/* The FedProx anchor: the caller's C-contiguous (d, h), (h), (h, k), (k) tensors the
   proximal term pulls towards (padding stays 0, as in the weights). w1's is read where it
   is (any alignment) when h is a multiple of 4, else copied padded. Needs a net allocated
   with MLCORE_NEED_PROX; without this call the net has no anchor and no proximal term. */
static inline void mlcore_net_load_anchor(mlcore_net *net, const double *w1, const double *b1,
                                          const double *w2, const double *b2)
{
    ptrdiff_t i;
    if (net->ab1 == NULL) return; /* not allocated for it */
    if (net->aw1_own == NULL) net->aw1 = w1;
    else {
        for (i = 0; i < net->d; i++)
            memcpy(net->aw1_own + i * net->hp, w1 + i * net->h, net->h * 8);
        net->aw1 = net->aw1_own;
    }
    memcpy(net->ab1, b1, net->h * 8);
    for (i = 0; i < net->h; i++) memcpy(net->aw2 + i * net->kp, w2 + i * net->k, net->k * 8);
    memcpy(net->ab2, b2, net->k * 8);
}

/* Copy the padded tensors t1 (d, hp), t2 (hp), t3 (hp, kp), t4 (kp) out, unpadded (t1 may
   be w1 itself: the caller's w1 the net worked in, left as it is). */
static inline void mlcore_net_unload(const mlcore_net *net, const double *t1, const double *t2,
                                     const double *t3, const double *t4, double *w1,
                                     double *b1, double *w2, double *b2)
{
    ptrdiff_t i;
    if (t1 != w1)
        for (i = 0; i < net->d; i++) memcpy(w1 + i * net->h, t1 + i * net->hp, net->h * 8);
    memcpy(b1, t2, net->h * 8);
    for (i = 0; i < net->h; i++) memcpy(w2 + i * net->k, t3 + i * net->kp, net->k * 8);
    memcpy(b2, t4, net->k * 8);
}

static inline uint64_t mlcore_splitmix64(uint64_t *state)
{
    uint64_t z;
    *state += 0x9E3779B97F4A7C15ull;
    z = *state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Fisher-Yates over the current order, drawing from SplitMix64 (reference.py mirrors it). */
static inline void mlcore_shuffle(int64_t *order, ptrdiff_t n, uint64_t *state)
{
    ptrdiff_t i, j;
    int64_t tmp;
    for (i = n - 1; i > 0; i--) {
        j = (ptrdiff_t)(mlcore_splitmix64(state) % (uint64_t)(i + 1));
        tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
}

/* Seconds on the monotonic clock (the one Python's time.monotonic reads on Linux). train()
   reads it to stop at its time limit; it never affects the arithmetic. */
static inline double mlcore_now(void)
{
#ifdef CLOCK_MONOTONIC
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

/* train() reads the clock before a step once the steps since its last reading have done
   this many multiply-adds (rows x padded parameters): every full-batch epoch of the seed's
   workload (1,000 rows x 1,034 parameters), every ~1,000 steps of one-row batches. A reading
   costs ~20 ns against ~0.1 ms of work: no measurable cost, and a stop within ~0.1 ms of
   the limit whatever the batch size (one step is never cut short). */
#define MLCORE_CLOCK_WORK ((double)(1 << 20))

/* ------------------------------------------------------ one body per instruction set */

typedef ptrdiff_t (*mlcore_train_fn)(mlcore_net *, const double *, const int64_t *, ptrdiff_t,
                                     ptrdiff_t, double, ptrdiff_t, double, double, uint64_t,
                                     double);
typedef void (*mlcore_gradient_fn)(mlcore_net *, const double *, const int64_t *, ptrdiff_t);
typedef void (*mlcore_evaluate_fn)(mlcore_net *, const double *, const int64_t *, ptrdiff_t,
                                   double *, int64_t *, double *);
typedef void (*mlcore_exp_fn)(const double *, double *, ptrdiff_t);

#define MLP_ISA generic
#define MLP_W 2
#define MLP_RT 4
#define MLP_NV 2
#define MLP_KV 7
#define MLP_FMA_HW 0
#include "_mlp_impl.h"

#if MLCORE_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define MLP_ISA avx2
#define MLP_W 4
#define MLP_RT 4
#define MLP_NV 3
#define MLP_KV 8
#define MLP_FMA_HW 1
#define MLP_MOVEMASK(m) _mm256_movemask_pd((__m256d)(m))
#include "_mlp_impl.h"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl,avx512dq")
#define MLP_ISA avx512
#define MLP_W 4
#define MLP_RT 4
#define MLP_NV 6
#define MLP_KV 8
#define MLP_FMA_HW 1
#define MLP_MOVEMASK(m) _mm256_movemask_pd((__m256d)(m))
#include "_mlp_impl.h"
#pragma GCC pop_options
#endif

/* ------------------------------------------------------------------ run-time dispatch */

typedef struct {
    const char *name;
    mlcore_train_fn train;
    mlcore_gradient_fn gradient;
    mlcore_evaluate_fn evaluate;
    mlcore_exp_fn exp_array;
} mlcore_isa_t;

#define MLCORE_N_ISA 3
static const mlcore_isa_t mlcore_isas[MLCORE_N_ISA] = {
#if MLCORE_X86
    {"sse2", mlcore_train_generic, mlcore_gradient_generic, mlcore_evaluate_generic,
     mlcore_exp_array_generic},
    {"avx2", mlcore_train_avx2, mlcore_gradient_avx2, mlcore_evaluate_avx2,
     mlcore_exp_array_avx2},
    {"avx512", mlcore_train_avx512, mlcore_gradient_avx512, mlcore_evaluate_avx512,
     mlcore_exp_array_avx512},
#else
    {"generic", mlcore_train_generic, mlcore_gradient_generic, mlcore_evaluate_generic,
     mlcore_exp_array_generic},
    {NULL, NULL, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
#endif
};

/* Whether this CPU (and OS) can run path i. */
static inline int mlcore_isa_supported(int i)
{
    if (i < 0 || i >= MLCORE_N_ISA || mlcore_isas[i].name == NULL) return 0;
#if MLCORE_X86
    __builtin_cpu_init();
    if (i == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (i == 2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
               && __builtin_cpu_supports("avx512f")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    return 1;
}

static inline int mlcore_best_isa(void)
{
    int i;
    for (i = MLCORE_N_ISA - 1; i > 0; i--)
        if (mlcore_isa_supported(i)) return i;
    return 0;
}

#endif /* MLCORE_MLP_H */
