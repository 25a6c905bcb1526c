/* The kernels' body for one instruction set: included by _mlp.h once per path, with
   MLP_ISA (name suffix), MLP_W (doubles per vector: 4, or 2 where the machine has only
   128-bit registers, since gcc handles 256-bit vector types badly without AVX), MLP_RT (rows
   per register tile of the dense products), MLP_NV (vectors per such tile), MLP_KV (vectors
   per class tile) and optionally MLP_MOVEMASK. Only the tiling and the instructions vary between inclusions; every
   element's sum runs in the order written here, so the bits do not.

   Summation orders (per element, all paths), each term added by one fused multiply-add
   (FMA below: acc = fma(a, b, acc), one rounding per term):
     z1[i,j]  = b1[j] + x[i,0] w1[0,j] + x[i,1] w1[1,j] + ...           (left to right)
     z2[i,c]  = b2[c] + sum over active j ascending of z1[i,j] w2[j,c]
     softmax  = e / s, e = exp(z2 - max), s = (s0 + s1) + (s2 + s3), s_l summing the e[c]
                with c % 4 == l in ascending c
     d2       = p - onehot(y);  d1[i,j] = (z1[i,j] > 0) * sum over c ascending of d2[i,c] w2[j,c]
     gradients: sums over the batch's rows in the order given, row by row (w1, w2: fused
                multiply-adds from 0 or the block's partial sum; biases: plain adds). */

#define MLP_CAT2(a, b) a##_##b
#define MLP_CAT(a, b) MLP_CAT2(a, b)
#define F(name) MLP_CAT(mlcore_##name, MLP_ISA)
#define W MLP_W
#if MLP_W == 4
#define V mlcore_v4d
#define VI mlcore_v4di
#define VU mlcore_v4du
#define VMEM mlcore_v4d_mem
#define VUMEM mlcore_v4d_umem
#define SPLAT(s) ((V){(s), (s), (s), (s)})
#define ISPLAT(s) ((VI){(s), (s), (s), (s)})
#define LANES ((VI){0, 1, 2, 3})
#else
#define V mlcore_v2d
#define VI mlcore_v2di
#define VU mlcore_v2du
#define VMEM mlcore_v2d_mem
#define VUMEM mlcore_v2d_umem
#define SPLAT(s) ((V){(s), (s)})
#define ISPLAT(s) ((VI){(s), (s)})
#define LANES ((VI){0, 1})
#endif
/* One `case` per tile width 1 .. MLP_NV vectors; each switch defines MLP_TILE(NV_) first. */
#if MLP_NV >= 6
#define MLP_TILE_CASES MLP_TILE(1) MLP_TILE(2) MLP_TILE(3) MLP_TILE(4) MLP_TILE(5) MLP_TILE(6)
#elif MLP_NV >= 5
#define MLP_TILE_CASES MLP_TILE(1) MLP_TILE(2) MLP_TILE(3) MLP_TILE(4) MLP_TILE(5)
#elif MLP_NV >= 4
#define MLP_TILE_CASES MLP_TILE(1) MLP_TILE(2) MLP_TILE(3) MLP_TILE(4)
#elif MLP_NV >= 3
#define MLP_TILE_CASES MLP_TILE(1) MLP_TILE(2) MLP_TILE(3)
#elif MLP_NV >= 2
#define MLP_TILE_CASES MLP_TILE(1) MLP_TILE(2)
#else
#define MLP_TILE_CASES MLP_TILE(1)
#endif

#define LD(p) ((V)(*(const VMEM *)(p)))
#define LDU(p) ((V)(*(const VUMEM *)(p))) /* p 8-byte aligned only */
#define ST(p, v) (*(VMEM *)(p) = (v))

/* FMA(a, b, c) = a * b + c rounded once (IEEE fusedMultiplyAdd), lane by lane: the one
   operation of every dense and sparse product below. The AVX2 and AVX-512 paths
   (MLP_FMA_HW) use the FMA3 instruction; the SSE2 and generic paths call the C library's
   fma(), correctly rounded by C99 (glibc: the FMA instruction where the CPU has one, an
   exact software emulation where it has not). Correct rounding has one answer, so every
   path gives the same bits; slow on SSE2, which no FMA-capable CPU takes by default.
   Everything else (exp, softmax, the steps) stays unfused: -ffp-contract=off. */
#if MLP_FMA_HW
#define FMA(a, b, c) ((V)_mm256_fmadd_pd((__m256d)(a), (__m256d)(b), (__m256d)(c)))
#else
MLCORE_ALWAYS_INLINE V F(fma_lanes)(V a, V b, V c)
{
    V out;
    int lane;
    for (lane = 0; lane < W; lane++) out[lane] = fma(a[lane], b[lane], c[lane]);
    return out;
}
#define FMA(a, b, c) F(fma_lanes)((a), (b), (c))
#endif

#ifndef MLP_MOVEMASK
MLCORE_ALWAYS_INLINE int F(movemask)(VI m)
{
    int bits = 0, lane;
    for (lane = 0; lane < W; lane++) bits |= (int)((uint64_t)m[lane] >> 63) << lane;
    return bits;
}
#define MLP_MOVEMASK(m) F(movemask)(m)
#define MLP_OWN_MOVEMASK
#endif

MLCORE_ALWAYS_INLINE V F(blend)(VI mask, V a, V b) /* mask ? a : b, lane by lane */
{
    return (V)(((VI)a & mask) | ((VI)b & ~mask));
}

/* exp(t), t <= 0: mlcore_exp_nonpos lane by lane (same operations, same bits). */
MLCORE_ALWAYS_INLINE V F(vexp)(V t)
{
    const V lo = SPLAT(-708.0), magic = SPLAT(6755399441055744.0);
    V kd, k, r, r2, r4, r8, p;
    VU bits;
    t = F(blend)(t < lo, lo, t);
    MLCORE_EXP_REDUCED(t, magic, kd, k, r, r2, r4, r8, p);
    bits = (VU)kd;
    bits = (bits + 1023u) << 52;
    return p * (V)bits;
}

static void F(exp_array)(const double *t, double *out, ptrdiff_t n)
{
    ptrdiff_t i, j;
    V v;
    for (i = 0; i + W <= n; i += W) {
        memcpy(&v, t + i, sizeof v);
        v = F(vexp)(v);
        memcpy(out + i, &v, sizeof v);
    }
    if (i < n) {
        v = SPLAT(0.0);
        for (j = 0; j < n - i; j++) v[j] = t[i + j];
        v = F(vexp)(v);
        for (j = 0; j < n - i; j++) out[i + j] = v[j];
    }
}

/* ------------------------------------------------------------- dense register tiles */

/* acc[r][v] += coef[r*crs + t*ccs] * b[t*bs + v] for t ascending (r < rt, v < nv), each
   load of b serving rt rows: the one accumulation tile() and tile_step() share. bv, c, t, r
   and v are the caller's scratch variables. b is loaded unaligned: it may be the caller's
   w1 (forward passes), and on aligned data the load costs the same. */
#define MLP_TILE_SUM(acc, bv, c, t, r, v, coef, crs, ccs, b, bs, len, rt, nv)                \
    for (t = 0; t < len; t++) {                                                               \
        for (v = 0; v < nv; v++) bv[v] = LDU(b + t * bs + W * v);                             \
        for (r = 0; r < rt; r++) {                                                            \
            c = coef[r * crs + t * ccs];                                                      \
            for (v = 0; v < nv; v++) acc[r][v] = FMA(bv[v], SPLAT(c), acc[r][v]);               \
        }                                                                                     \
    }

/* out[r, v] = init[r, v] + sum over t ascending of coef[r*crs + t*ccs] * b[t*bs + v]
   for rt rows and nv vectors (compile-time constants once inlined: acc stays in registers,
   and each load of b serves rt rows). init NULL means 0. */
MLCORE_ALWAYS_INLINE void F(tile)(double *out, ptrdiff_t os, const double *init, ptrdiff_t is,
                                  const double *coef, ptrdiff_t crs, ptrdiff_t ccs,
                                  const double *b, ptrdiff_t bs, ptrdiff_t len, const int rt,
                                  const int nv)
{
    V acc[MLP_RT][MLP_NV], bv[MLP_NV];
    double c;
    ptrdiff_t t;
    int r, v;
    for (r = 0; r < rt; r++)
        for (v = 0; v < nv; v++) acc[r][v] = init ? LD(init + r * is + W * v) : SPLAT(0.0);
    MLP_TILE_SUM(acc, bv, c, t, r, v, coef, crs, ccs, b, bs, len, rt, nv)
    for (r = 0; r < rt; r++)
        for (v = 0; v < nv; v++) ST(out + r * os + W * v, acc[r][v]);
}

/* The tile product over `rows` rows and `nvec` vectors (see tile). is = 0 uses one init
   row for all rows (a bias). */
static void F(dense)(double *out, ptrdiff_t os, const double *init, ptrdiff_t is,
                     const double *coef, ptrdiff_t crs, ptrdiff_t ccs, const double *b,
                     ptrdiff_t bs, ptrdiff_t len, ptrdiff_t rows, ptrdiff_t nvec)
{
    ptrdiff_t r0, v0;
    int nv, full;
    for (v0 = 0; v0 < nvec; v0 += MLP_NV) {
        nv = nvec - v0 < MLP_NV ? (int)(nvec - v0) : MLP_NV;
        for (r0 = 0; r0 < rows; r0 += full ? MLP_RT : 1) {
            double *o = out + r0 * os + W * v0;
            const double *in = init ? init + r0 * is + W * v0 : NULL;
            const double *cf = coef + r0 * crs, *bb = b + W * v0;
            full = rows - r0 >= MLP_RT;
#define MLP_TILE(NV_)                                                                \
    case NV_:                                                                        \
        if (full) F(tile)(o, os, in, is, cf, crs, ccs, bb, bs, len, MLP_RT, NV_);   \
        else F(tile)(o, os, in, is, cf, crs, ccs, bb, bs, len, 1, NV_);             \
        break;
            switch (nv) {
                MLP_TILE_CASES
            }
#undef MLP_TILE
        }
    }
}

/* out[r, :width] = init + sum over t ascending of coef[r*crs + t] * b[t*bs + :width] for
   rows < MLP_RT rows: the sums of dense() in the same order, but b streamed row by row, each
   of its rows read once and contiguously. For a forward pass of a few rows through a wide
   w1 that lives in memory: dense() walks w1 in column panels, a stride of a whole row per
   step, which the hardware prefetchers follow badly. */
MLCORE_ALWAYS_INLINE void F(rows_pass)(double *out, ptrdiff_t os, const double *coef,
                                       ptrdiff_t crs, const double *b, ptrdiff_t bs,
                                       ptrdiff_t width, const int rows, const int nt)
{
    V c[MLP_RT][4], acc[MLP_RT];
    ptrdiff_t v;
    int r, tt;
    for (r = 0; r < rows; r++)
        for (tt = 0; tt < nt; tt++) c[r][tt] = SPLAT(coef[r * crs + tt]);
    for (v = 0; v < width; v += W) {
        for (r = 0; r < rows; r++) acc[r] = LD(out + r * os + v);
        for (tt = 0; tt < nt; tt++) { /* t ascending: dense()'s order */
            const V bv = LDU(b + tt * bs + v);
            for (r = 0; r < rows; r++) acc[r] = FMA(bv, c[r][tt], acc[r]);
        }
        for (r = 0; r < rows; r++) ST(out + r * os + v, acc[r]);
    }
}

#if MLP_RT != 4
#error "dense_rows handles the 1-3 rows below one register tile of 4"
#endif
static void F(dense_rows)(double *out, ptrdiff_t os, const double *init, const double *coef,
                          ptrdiff_t crs, const double *b, ptrdiff_t bs, ptrdiff_t len,
                          ptrdiff_t rows, ptrdiff_t width)
{
    ptrdiff_t r, t, nt;
    for (r = 0; r < rows; r++) memcpy(out + r * os, init, (size_t)width * 8);
    for (t = 0; t < len; t += nt) { /* 4 rows of b per pass: a quarter of the z loads, stores */
        nt = len - t < 4 ? 1 : 4;
#define MLP_PASS(R_, T_) F(rows_pass)(out, os, coef + t, crs, b + t * bs, bs, width, R_, T_)
        if (nt == 4 && rows == 1) MLP_PASS(1, 4);
        else if (nt == 4 && rows == 2) MLP_PASS(2, 4);
        else if (nt == 4) MLP_PASS(3, 4);
        else if (rows == 1) MLP_PASS(1, 1);
        else if (rows == 2) MLP_PASS(2, 1);
        else MLP_PASS(3, 1);
#undef MLP_PASS
    }
}

/* Low-rank step of rt rows of w (row stride ws) and nv vectors: g = 0 + sum over t
   ascending of coef[r*crs + t*ccs] * b[t*bs + v], the very sum tile() would have stored
   in a gradient (same order, same bits); then the step of F(step) on it, in registers
   (with anchor, same stride as w: the proximal term of F(step) first). */
MLCORE_ALWAYS_INLINE void F(tile_step)(double *w, double *vel, const double *anchor,
                                       ptrdiff_t ws, const double *coef, ptrdiff_t crs,
                                       ptrdiff_t ccs, const double *b, ptrdiff_t bs,
                                       ptrdiff_t len, double eta, double mu, double prox,
                                       const int rt, const int nv)
{
    V acc[MLP_RT][MLP_NV], bv[MLP_NV];
    double c;
    ptrdiff_t t;
    int r, v;
    for (r = 0; r < rt; r++)
        for (v = 0; v < nv; v++) acc[r][v] = SPLAT(0.0);
    MLP_TILE_SUM(acc, bv, c, t, r, v, coef, crs, ccs, b, bs, len, rt, nv)
    for (r = 0; r < rt; r++)
        for (v = 0; v < nv; v++) {
            double *wp = w + r * ws + W * v;
            V vv = acc[r][v];
            if (anchor) vv = vv + SPLAT(prox) * (LD(wp) - LDU(anchor + r * ws + W * v));
            if (vel) {
                vv = LD(vel + r * ws + W * v) * mu + vv;
                ST(vel + r * ws + W * v, vv);
            }
            ST(wp, LD(wp) - vv * eta);
        }
}

/* w (rows x nvec vectors, stride ws) takes its step from the low-rank gradient
   coef^T b (see tile_step); vel NULL: no momentum; anchor NULL: no proximal term. */
static void F(dense_step)(double *w, double *vel, const double *anchor, ptrdiff_t ws,
                          const double *coef, ptrdiff_t crs, ptrdiff_t ccs, const double *b,
                          ptrdiff_t bs, ptrdiff_t len, ptrdiff_t rows, ptrdiff_t nvec,
                          double eta, double mu, double prox)
{
    ptrdiff_t r0, v0;
    int nv, full;
    for (v0 = 0; v0 < nvec; v0 += MLP_NV) {
        nv = nvec - v0 < MLP_NV ? (int)(nvec - v0) : MLP_NV;
        for (r0 = 0; r0 < rows; r0 += full ? MLP_RT : 1) {
            double *o = w + r0 * ws + W * v0, *ov = vel ? vel + r0 * ws + W * v0 : NULL;
            const double *oa = anchor ? anchor + r0 * ws + W * v0 : NULL;
            const double *cf = coef + r0 * crs, *bb = b + W * v0;
            full = rows - r0 >= MLP_RT;
#define MLP_TILE(NV_)                                                                    \
    case NV_:                                                                            \
        if (full)                                                                        \
            F(tile_step)(o, ov, oa, ws, cf, crs, ccs, bb, bs, len, eta, mu, prox, MLP_RT, \
                         NV_);                                                           \
        else F(tile_step)(o, ov, oa, ws, cf, crs, ccs, bb, bs, len, eta, mu, prox, 1, NV_); \
        break;
            switch (nv) {
                MLP_TILE_CASES
            }
#undef MLP_TILE
        }
    }
}

/* ------------------------------------------------------------------- sparse products */

/* z2[r, v0 + v] = b2 + sum over active j ascending of z1[r, j] w2[j, v0 + v], for nv
   vectors. Outer loop over 64-unit words of the masks, so that slice of w2 stays in L1
   while every row of the block uses it; partial sums go through z2 between words. */
MLCORE_ALWAYS_INLINE void F(z2_tile)(mlcore_net *net, ptrdiff_t nrows, ptrdiff_t v0,
                                     const int nv)
{
    const ptrdiff_t hp = net->hp, kp = net->kp, hw = net->hw;
    const double *w2 = net->w2 + W * v0;
    V acc[MLP_KV];
    ptrdiff_t w, r, j;
    int v;
    uint64_t bits;
    for (w = 0; w < hw; w++) {
        for (r = 0; r < nrows; r++) {
            const double *z1r = net->z1 + r * hp;
            double *out = net->z2 + r * kp + W * v0;
            const double *init = w == 0 ? net->b2 + W * v0 : out;
            for (v = 0; v < nv; v++) acc[v] = LD(init + W * v);
            bits = net->rowmask[r * hw + w];
            while (bits) {
                j = w * 64 + __builtin_ctzll(bits);
                bits &= bits - 1;
                const double c = z1r[j];
                const double *row = w2 + j * kp;
                for (v = 0; v < nv; v++) acc[v] = FMA(LD(row + W * v), SPLAT(c), acc[v]);
            }
            for (v = 0; v < nv; v++) ST(out + W * v, acc[v]);
        }
    }
}

/* gw2[j, v0 + v] += sum over block rows r ascending where j is active of
   z1[r, j] d2[r, v0 + v]. */
MLCORE_ALWAYS_INLINE void F(gw2_tile)(mlcore_net *net, ptrdiff_t v0, const int nv)
{
    const ptrdiff_t hp = net->hp, kp = net->kp;
    V acc[MLP_KV];
    ptrdiff_t j, r;
    int v;
    uint64_t bits;
    for (j = 0; j < net->h; j++) {
        bits = net->colmask[j];
        if (!bits) continue;
        double *g = net->gw2 + j * kp + W * v0;
        for (v = 0; v < nv; v++) acc[v] = LD(g + W * v);
        while (bits) {
            r = __builtin_ctzll(bits);
            bits &= bits - 1;
            const double c = net->z1[r * hp + j];
            const double *d2r = net->z2 + r * kp + W * v0;
            for (v = 0; v < nv; v++) acc[v] = FMA(LD(d2r + W * v), SPLAT(c), acc[v]);
        }
        for (v = 0; v < nv; v++) ST(g + W * v, acc[v]);
    }
}

#define MLP_KV_SWITCH(CALL)                         \
    switch (nv) {                                   \
        case 1: CALL(1); break;                     \
        case 2: CALL(2); break;                     \
        case 3: CALL(3); break;                     \
        case 4: CALL(4); break;                     \
        case 5: CALL(5); break;                     \
        case 6: CALL(6); break;                     \
        case 7: CALL(7); break;                     \
        MLP_KV_MORE(CALL)                           \
    }
#if MLP_KV == 8
#define MLP_KV_MORE(CALL) case 8: CALL(8); break;
#elif MLP_KV == 7
#define MLP_KV_MORE(CALL)
#else
#error "MLP_KV must be 7 or 8"
#endif

static void F(z2)(mlcore_net *net, ptrdiff_t nrows)
{
    ptrdiff_t v0, kv = net->kp / W;
    int nv;
    for (v0 = 0; v0 < kv; v0 += MLP_KV) {
        nv = kv - v0 < MLP_KV ? (int)(kv - v0) : MLP_KV;
#define MLP_CALL(NV_) F(z2_tile)(net, nrows, v0, NV_)
        MLP_KV_SWITCH(MLP_CALL)
#undef MLP_CALL
    }
}

static void F(gw2)(mlcore_net *net)
{
    ptrdiff_t v0, kv = net->kp / W;
    int nv;
    for (v0 = 0; v0 < kv; v0 += MLP_KV) {
        nv = kv - v0 < MLP_KV ? (int)(kv - v0) : MLP_KV;
#define MLP_CALL(NV_) F(gw2_tile)(net, v0, NV_)
        MLP_KV_SWITCH(MLP_CALL)
#undef MLP_CALL
    }
}

/* ---------------------------------------------------------------------- block passes */

/* z1, the active-unit row masks and the logits z2 for the block's rows xb (nrows, d). */
static void F(block_forward)(mlcore_net *net, const double *xb, ptrdiff_t nrows)
{
    const ptrdiff_t hp = net->hp, hw = net->hw;
    ptrdiff_t r, v, w;
    /* a forward pass alone (no gradients) of a few rows through a w1 beyond L1: stream w1 */
    if (net->gb1 == NULL && nrows < MLP_RT && net->d * hp * 8 > MLCORE_FORWARD_L1_BYTES)
        F(dense_rows)(net->z1, hp, net->b1, xb, net->d, net->w1, hp, net->d, nrows, hp);
    else
        F(dense)(net->z1, hp, net->b1, 0, xb, net->d, 1, net->w1, hp, net->d, nrows, hp / W);
    for (r = 0; r < nrows; r++) {
        const double *z1r = net->z1 + r * hp;
        for (w = 0; w < hw; w++) {
            uint64_t word = 0; /* built in a register: no store-to-load chain */
            for (v = 64 * w; v < hp && v < 64 * (w + 1); v += W)
                word |= (uint64_t)MLP_MOVEMASK(LD(z1r + v) > SPLAT(0.0)) << (v % 64);
            net->rowmask[r * hw + w] = word;
        }
    }
    F(z2)(net, nrows);
}

/* Lanes of the class vector at c that hold real classes (the rest is padding). */
MLCORE_ALWAYS_INLINE VI F(keep)(ptrdiff_t c, ptrdiff_t k)
{
    return LANES + (int64_t)c < ISPLAT((int64_t)k);
}

/* exp sums in one fixed pattern for every vector width: four lanes l = c % 4, each summed
   in ascending c, then (l0 + l1) + (l2 + l3). With 2-wide vectors, part[0] holds lanes
   0, 1 and part[1] lanes 2, 3. */
MLCORE_ALWAYS_INLINE double F(sum4)(const V *part)
{
#if MLP_W == 4
    return (part[0][0] + part[0][1]) + (part[0][2] + part[0][3]);
#else
    return (part[0][0] + part[0][1]) + (part[1][0] + part[1][1]);
#endif
}

/* max over the real classes of z (exact, so the order does not matter). */
MLCORE_ALWAYS_INLINE double F(row_max)(const double *z, ptrdiff_t k, ptrdiff_t kp)
{
    const V ninf = SPLAT(-HUGE_VAL);
    V mv = ninf;
    double m;
    ptrdiff_t c;
    int lane;
    for (c = 0; c + W <= k; c += W) { /* whole vectors of real classes */
        V a = LD(z + c);
        mv = F(blend)(a > mv, a, mv);
    }
    for (; c < kp; c += W) { /* the padded tail */
        V a = F(blend)(F(keep)(c, k), LD(z + c), ninf);
        mv = F(blend)(a > mv, a, mv);
    }
    m = mv[0];
    for (lane = 1; lane < W; lane++) m = mv[lane] > m ? mv[lane] : m;
    return m;
}

/* In place on z2: logits -> softmax probabilities (padding 0); with y, then p - onehot(y)
   and gb2 += that, rows in order. In three passes over the block so that the rows' exp
   chains overlap instead of waiting on each row's horizontal max, sum and division. */
static void F(softmax_rows)(mlcore_net *net, ptrdiff_t nrows, const int64_t *y)
{
    const ptrdiff_t k = net->k, kp = net->kp;
    const V one = SPLAT(1.0);
    double m[MLCORE_BLOCK_MAX], s[MLCORE_BLOCK_MAX];
    ptrdiff_t r, c;
    for (r = 0; r < nrows; r++) m[r] = F(row_max)(net->z2 + r * kp, k, kp);
    for (r = 0; r < nrows; r++) {
        double *z = net->z2 + r * kp;
        V e, part[4 / W], mr = SPLAT(m[r]);
        int i;
        for (i = 0; i < 4 / W; i++) part[i] = SPLAT(0.0);
        for (c = 0; c < kp; c += W) {
            e = F(vexp)(LD(z + c) - mr);
            if (c + W > k) e = (V)((VI)e & F(keep)(c, k)); /* padding: exp must add 0 */
            ST(z + c, e);
            part[(c / W) % (4 / W)] = part[(c / W) % (4 / W)] + e;
        }
        s[r] = F(sum4)(part);
    }
    for (r = 0; r < nrows; r++) {
        double *z = net->z2 + r * kp;
        const V inv = SPLAT(1.0 / s[r]);
        if (y) {
            const VI yv = ISPLAT(y[r]);
            for (c = 0; c < kp; c += W) {
                /* p - onehot(y): subtract 1.0 in lane y, 0.0 elsewhere (exact) */
                V p = LD(z + c) * inv - (V)((VI)one & (LANES + (int64_t)c == yv));
                ST(z + c, p);
            }
        } else {
            for (c = 0; c < kp; c += W) ST(z + c, LD(z + c) * inv);
        }
    }
    if (y) /* gb2 += d2, rows in order; the sum stays in a register along the rows */
        for (c = 0; c < kp; c += W) {
            V acc = LD(net->gb2 + c);
            for (r = 0; r < nrows; r++) acc = acc + LD(net->z2 + r * kp + c);
            ST(net->gb2 + c, acc);
        }
}

/* Backward pass of a block whose z2 holds p - onehot(y): adds its rows' gradients, its
   hidden deltas into d1 (nrows, hp); in low rank, gw1's part stays in d1 and xb. */
static void F(block_backward)(mlcore_net *net, const double *xb, ptrdiff_t nrows, double *d1)
{
    const ptrdiff_t hp = net->hp, kp = net->kp;
    ptrdiff_t r, v;
    /* d1 = (d2 @ w2.T) masked by z1 > 0; gb1 += d1, rows in order. */
    F(dense)(d1, hp, NULL, 0, net->z2, kp, 1, net->w2t, hp, net->k, nrows, hp / W);
    for (v = 0; v < hp; v += W) { /* column-wise: the gb1 and mask sums stay in registers */
        V acc = LD(net->gb1 + v);
        VI cols = ISPLAT(0);
        for (r = 0; r < nrows; r++) {
            const int64_t bit = (int64_t)((uint64_t)1 << r);
            VI on = LD(net->z1 + r * hp + v) > SPLAT(0.0);
            V dv = (V)((VI)LD(d1 + r * hp + v) & on);
            ST(d1 + r * hp + v, dv);
            acc = acc + dv;
            cols = cols | (on & ISPLAT(bit));
        }
        ST(net->gb1 + v, acc);
        memcpy(net->colmask + v, &cols, sizeof cols); /* bit r: unit active in block row r */
    }
    F(gw2)(net);
    /* gw1[l, :] += sum over rows of x[r, l] d1[r, :] */
    if (!net->low_rank)
        F(dense)(net->gw1, hp, net->gw1, hp, xb, 1, net->d, d1, hp, nrows, net->d, hp / W);
}

/* Summed gradient over rows (row indices, or NULL: rows 0..n-1 in order) into net->g*; in
   low rank, w1's part as the rows (net->xr when gathered) and net->d1 (n, hp). */
static void F(batch_gradient)(mlcore_net *net, const double *x, const int64_t *y,
                              const int64_t *rows, ptrdiff_t n)
{
    const ptrdiff_t d = net->d, hp = net->hp, kp = net->kp;
    int64_t yb[MLCORE_BLOCK_MAX];
    ptrdiff_t b0, nr, r;
    if (!net->low_rank) memset(net->gw1, 0, (size_t)(d * hp) * 8);
    memset(net->gb1, 0, (size_t)hp * 8);
    memset(net->gw2, 0, (size_t)(hp * kp) * 8);
    memset(net->gb2, 0, (size_t)kp * 8);
    for (b0 = 0; b0 < n; b0 += net->block) {
        const double *xb;
        nr = n - b0 < net->block ? n - b0 : net->block;
        if (rows) {
            double *xg = net->low_rank ? net->xr + b0 * d : net->xb;
            for (r = 0; r < nr; r++) {
                memcpy(xg + r * d, x + rows[b0 + r] * d, (size_t)d * 8);
                yb[r] = y[rows[b0 + r]];
            }
            xb = xg;
        } else {
            memcpy(yb, y + b0, (size_t)nr * sizeof(int64_t));
            xb = x + b0 * d;
        }
        F(block_forward)(net, xb, nr);
        F(softmax_rows)(net, nr, yb);
        F(block_backward)(net, xb, nr, net->low_rank ? net->d1 + b0 * hp : net->d1);
    }
}

/* v = mu * v + g; w -= eta * v. size % W == 0. vel NULL (no momentum): w -= eta * g, the
   bits of mu = 0 (v * 0 + g is g: a sum that starts at +0 is never -0).
   With anchor (FedProx, Li et al. 2020): g is first g + prox * (w - anchor), the gradient
   of the proximal term (prox / 2) ||w - anchor||^2 added to the loss's; anchor NULL runs the
   loops below it, which have no such operation (prox = 0 gives the bits of no term). */
static void F(step)(double *w, double *vel, const double *anchor, const double *g,
                    ptrdiff_t size, double eta, double mu, double prox)
{
    ptrdiff_t i;
    if (anchor) {
        const V pv = SPLAT(prox);
        for (i = 0; i < size; i += W) {
            const V wv = LD(w + i);
            V gv = LD(g + i) + pv * (wv - LDU(anchor + i));
            if (vel) {
                gv = LD(vel + i) * mu + gv;
                ST(vel + i, gv);
            }
            ST(w + i, wv - gv * eta);
        }
        return;
    }
    if (!vel) {
        for (i = 0; i < size; i += W) ST(w + i, LD(w + i) - LD(g + i) * eta);
        return;
    }
    for (i = 0; i < size; i += W) {
        V vv = LD(vel + i) * mu + LD(g + i);
        ST(vel + i, vv);
        ST(w + i, LD(w + i) - vv * eta);
    }
}

/* ---------------------------------------------------------------------- entry points */

/* Epochs of (mini-)batch descent on the net's padded weights; batch 0 = full batch in
   row order, else rows reshuffled each epoch from seed (net->order must hold n).
   limit_s > 0: stop before any step that would start limit_s seconds or more after the call
   (the clock is read as MLCORE_CLOCK_WORK says). mu must be 0 unless the net has velocities.
   prox (FedProx's mu) is used when the net has an anchor (mlcore_net_load_anchor): every
   step's gradient of every tensor gains prox * (w - anchor), see F(step).
   Returns the epochs completed: `epochs`,
   or fewer when the limit stopped it (the weights are then mid-training: discard them). */
static ptrdiff_t F(train)(mlcore_net *net, const double *x, const int64_t *y, ptrdiff_t n,
                          ptrdiff_t epochs, double eta, ptrdiff_t batch, double mu,
                          double prox, uint64_t seed, double limit_s)
{
    const ptrdiff_t d = net->d, hp = net->hp, kp = net->kp;
    ptrdiff_t epoch, start, size, i, step = batch > 0 ? batch : n;
    int64_t *rows = batch > 0 ? net->order : NULL;
    uint64_t state = seed;
    const double params = (double)(d * hp + hp * kp);
    const double stop_at = limit_s > 0 ? mlcore_now() + limit_s : 0.0;
    double unclocked = MLCORE_CLOCK_WORK; /* work since the last clock reading */
    if (rows)
        for (i = 0; i < n; i++) rows[i] = i;
    for (epoch = 0; epoch < epochs; epoch++) {
        if (rows) mlcore_shuffle(rows, n, &state);
        for (start = 0; start < n; start += size) {
            size = n - start < step ? n - start : step;
            if (limit_s > 0) {
                if (unclocked >= MLCORE_CLOCK_WORK) {
                    if (mlcore_now() >= stop_at) return epoch;
                    unclocked = 0.0;
                }
                unclocked += (double)size * params;
            }
            if (rows) F(batch_gradient)(net, x, y, rows + start, size);
            else F(batch_gradient)(net, x + start * d, y + start, NULL, size);
            if (net->low_rank) /* gw1 = X^T D1, rows ascending, summed inside the step */
                F(dense_step)(net->w1, net->vw1, net->aw1, hp, rows ? net->xr : x + start * d,
                              1, d, net->d1, hp, size, d, hp / W, eta, mu, prox);
            else F(step)(net->w1, net->vw1, net->aw1, net->gw1, d * hp, eta, mu, prox);
            F(step)(net->b1, net->vb1, net->ab1, net->gb1, hp, eta, mu, prox);
            F(step)(net->w2, net->vw2, net->aw2, net->gw2, hp * kp, eta, mu, prox);
            F(step)(net->b2, net->vb2, net->ab2, net->gb2, kp, eta, mu, prox);
            mlcore_net_transpose_w2(net);
        }
    }
    return epochs;
}

static void F(gradient)(mlcore_net *net, const double *x, const int64_t *y, ptrdiff_t n)
{
    F(batch_gradient)(net, x, y, NULL, n);
}

/* One forward pass over rows in order: any of proba (n, k), labels (n) (first maximum
   wins, as numpy.argmax) and *loss (cross-entropy summed over rows in order; needs y). */
static void F(evaluate)(mlcore_net *net, const double *x, const int64_t *y, ptrdiff_t n,
                        double *proba, int64_t *labels, double *loss)
{
    const ptrdiff_t d = net->d, k = net->k, kp = net->kp;
    ptrdiff_t b0, nr, r, c, best;
    double total = 0.0, m;
    for (b0 = 0; b0 < n; b0 += net->block) {
        nr = n - b0 < net->block ? n - b0 : net->block;
        F(block_forward)(net, x + b0 * d, nr);
        for (r = 0; r < nr; r++) {
            const double *z = net->z2 + r * kp;
            best = 0;
            for (c = 1; c < k; c++)
                if (z[c] > z[best]) best = c;
            m = z[best];
            if (labels) labels[b0 + r] = best;
            if (loss) {
                V part[4 / W], e, mr = SPLAT(m);
                int i;
                for (i = 0; i < 4 / W; i++) part[i] = SPLAT(0.0);
                for (c = 0; c < kp; c += W) {
                    e = F(vexp)(LD(z + c) - mr);
                    if (c + W > k) e = (V)((VI)e & F(keep)(c, k));
                    part[(c / W) % (4 / W)] = part[(c / W) % (4 / W)] + e;
                }
                total = total + (log(F(sum4)(part)) - (z[y[b0 + r]] - m));
            }
        }
        if (proba) {
            F(softmax_rows)(net, nr, NULL);
            for (r = 0; r < nr; r++)
                memcpy(proba + (b0 + r) * k, net->z2 + r * kp, (size_t)k * 8);
        }
    }
    if (loss) *loss = total;
}

#undef MLP_KV_SWITCH
#undef MLP_TILE_CASES
#undef MLP_TILE_SUM
#undef MLP_KV_MORE
#ifdef MLP_OWN_MOVEMASK
#undef MLP_MOVEMASK
#undef MLP_OWN_MOVEMASK
#endif
#undef MLP_CAT2
#undef MLP_CAT
#undef F
#undef W
#undef V
#undef VI
#undef VU
#undef VMEM
#undef VUMEM
#undef ISPLAT
#undef LANES
#undef LD
#undef LDU
#undef ST
#undef SPLAT
#undef FMA

/* The parameters of this instantiation: the includer sets them afresh for the next one. */
#undef MLP_ISA
#undef MLP_W
#undef MLP_RT
#undef MLP_NV
#undef MLP_KV
#undef MLP_MOVEMASK
#undef MLP_FMA_HW
