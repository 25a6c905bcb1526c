# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# distutils: extra_compile_args = -ffp-contract=off
"""Cython kernels for the d -> h -> k ReLU/softmax MLP (see mlcore/reference.py for the maths).

Why the kernels look like this:

* Bitwise reproducibility first. Every sum runs in one fixed order (rows in the given order,
  features/units/classes in index order), and no loop reassociates a reduction: gcc vectorises
  only element-wise loops (setup.py builds without -ffast-math). So the same inputs give the
  same bits in every run, process and thread count. No BLAS: its blocking and threading change
  the summation order. exp() is our own (exp_nonpos in _kernels.pxd), built from +, -, *
  only, so the bits do not depend on the libm version or on which libm code path a CPU takes.
* Fused per row. For each row the forward pass, softmax and backward pass run back to back
  on h- and k-sized scratch vectors that stay in L1; no (n, h) or (n, k) temporaries are
  built, unlike the numpy reference. Weight gradients are added once per block of BLOCK
  rows (flush_block), still row by row in order for every element, so the gradient
  matrices are loaded and stored once per block instead of once per row.
* One inner kernel, accumulate_rows: out[j] += sum_t coef[t] * mat[t, j], tiled over 16
  columns whose partial sums live in registers across all t (8 independent SSE2 add chains
  hide the add latency). x @ w1, a1 @ w2 and both weight gradients have this shape; its
  innermost loops run over a contiguous h or k axis. The one product of another shape,
  d1 = d2 @ w2.T, is needed only at active hidden units: there each entry is dot4, a dot
  product summed in four interleaved partial sums, a fixed order gcc can still vectorise.
* Built for baseline x86-64 (SSE2). Measured on an AVX-512 machine: -mavx2 gave the same
  bits but was 1.8x slower (gcc then vectorises the wrong loop, with emulated gathers), so
  there is no -march flag. -ffp-contract=off (the distutils line above) forbids fusing
  a * b + c into FMA on targets that have it, which would change the bits per machine.
* ReLU sparsity: hidden units with z1 <= 0 contribute nothing to the second layer or to
  the weight gradients, so only active units are visited (an index list built without
  branches: the on/off pattern is unpredictable). Skipping drops exact zero terms only.
* No float selects inside vector loops: with gcc's default -ftrapping-math they stop
  vectorisation, so the exp clamp sits outside the loop, behind a min check per row.
* The whole training loop (all epochs, shuffles and steps) runs inside `with nogil`, so other
  Python threads (RPC health checks) keep running. Shapes and dtypes are checked once, in
  mlcore/model.py, before the kernels are entered; work buffers are allocated once per call.
* Mini-batch shuffling uses SplitMix64 + Fisher-Yates in C (mirrored in reference.py), so a
  shuffle needs no Python and no memory beyond one index vector.
"""

from libc.math cimport log
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memset

import numpy as np

# ---------------------------------------------------------------------------- per-row pieces


cdef enum:
    BLOCK = 16  # rows per weight-gradient pass (flush_block)


cdef inline void accumulate_tile(double* out, Py_ssize_t width, const double* coef,
                                 const double* mat, const Py_ssize_t* rows, Py_ssize_t n,
                                 Py_ssize_t tile) noexcept nogil:
    """accumulate_rows on out[0:tile] (mat already offset); tile <= 16, a constant when
    inlined, so gcc unrolls the u loops and keeps acc[] in vector registers."""
    cdef Py_ssize_t t, u, r
    cdef double acc[16]
    cdef double v
    cdef const double* row
    for u in range(tile):
        acc[u] = out[u]
    for t in range(n):
        r = rows[t]
        v = coef[r]
        row = mat + r * width
        for u in range(tile):
            acc[u] = acc[u] + v * row[u]
    for u in range(tile):
        out[u] = acc[u]


cdef inline double dot4(const double* a, const double* b, Py_ssize_t n) noexcept nogil:
    """sum a[c] * b[c] in a fixed pattern: four interleaved partial sums (vectorisable)."""
    cdef Py_ssize_t c, lane
    cdef double part[4]
    part[0] = part[1] = part[2] = part[3] = 0.0
    for c in range(0, n - n % 4, 4):
        for lane in range(4):
            part[lane] = part[lane] + a[c + lane] * b[c + lane]
    for c in range(n - n % 4, n):
        part[c % 4] = part[c % 4] + a[c] * b[c]
    return (part[0] + part[1]) + (part[2] + part[3])


cdef void accumulate_rows(double* out, Py_ssize_t width, const double* coef,
                          const double* mat, const Py_ssize_t* rows,
                          Py_ssize_t n) noexcept nogil:
    """out[j] += sum over t in order of coef[rows[t]] * mat[rows[t], j] (mat is (?, width)).

    Tiled over columns whose partial sums stay in registers for all t (16 columns give 8
    independent add chains, enough to hide the add latency); every out[j] still sums its
    terms in order t = 0, 1, ..., so the tiling leaves the bits alone.
    """
    cdef Py_ssize_t jb = 0
    while jb + 16 <= width:
        accumulate_tile(out + jb, width, coef, mat + jb, rows, n, 16)
        jb = jb + 16
    if jb + 8 <= width:
        accumulate_tile(out + jb, width, coef, mat + jb, rows, n, 8)
        jb = jb + 8
    if jb + 4 <= width:
        accumulate_tile(out + jb, width, coef, mat + jb, rows, n, 4)
        jb = jb + 4
    if jb + 2 <= width:
        accumulate_tile(out + jb, width, coef, mat + jb, rows, n, 2)
        jb = jb + 2
    if jb < width:
        accumulate_tile(out + jb, width, coef, mat + jb, rows, n, 1)


cdef double forward_row(const Net* net, const double* xr, Scratch* s) noexcept nogil:
    """z1, active and z2 = relu(z1) @ w2 + b2 for one row; returns max(z2)."""
    cdef Py_ssize_t j, c, h = net.h, k = net.k, count = 0
    cdef int pos
    cdef double m
    cdef double* z1 = s.z1
    cdef double* z2 = s.z2
    memcpy(z1, net.b1, h * sizeof(double))
    accumulate_rows(z1, h, xr, net.w1, s.iota, net.d)
    # Branch-free: the ReLU on/off pattern is unpredictable.
    for j in range(h):
        pos = positive(z1[j])
        s.active[count] = j
        count = count + pos
    s.n_active = count
    memcpy(z2, net.b2, k * sizeof(double))
    accumulate_rows(z2, k, z1, net.w2, s.active, count)
    m = z2[0]
    for c in range(1, k):
        if z2[c] > m:
            m = z2[c]
    return m


cdef void softmax_row(double* z2, double m, Py_ssize_t k) noexcept nogil:
    """z2 <- softmax(z2) in place, given m = max(z2)."""
    cdef Py_ssize_t c, lane
    cdef double lo = z2[0]
    cdef double part[4]
    for c in range(1, k):
        if z2[c] < lo:
            lo = z2[c]
    if lo - m >= -708.0:  # always, short of divergence: the branch-free loop vectorises
        for c in range(k):
            z2[c] = exp_nonpos_unclamped(z2[c] - m)
    else:                 # same formula plus the clamp, so the bits agree where both apply
        for c in range(k):
            z2[c] = exp_nonpos(z2[c] - m)
    # Four interleaved partial sums in a fixed pattern: vectorisable, still one fixed order.
    part[0] = part[1] = part[2] = part[3] = 0.0
    for c in range(0, k - k % 4, 4):
        for lane in range(4):
            part[lane] = part[lane] + z2[c + lane]
    for c in range(k - k % 4, k):
        part[c % 4] = part[c % 4] + z2[c]
    m = 1.0 / ((part[0] + part[1]) + (part[2] + part[3]))
    for c in range(k):
        z2[c] = z2[c] * m


cdef void backward_row(const Net* net, const double* xr, Scratch* s, Grad* g,
                       Py_ssize_t r) noexcept nogil:
    """Bias gradients for one row, and its share of the block buffers (block row r).

    Needs s after forward_row with s.z2 = p - onehot(y). The weight gradients follow in
    flush_block, which adds the block's rows in order: the same terms in the same order as
    a row-by-row update, with fewer loads and stores of the gradient.
    """
    cdef Py_ssize_t t, l, j, c, h = net.h, k = net.k
    cdef const double* d2 = s.z2
    cdef double* d1 = s.d1b + r * h
    for c in range(k):
        g.b2[c] = g.b2[c] + d2[c]
    memcpy(s.d2b + r * k, d2, k * sizeof(double))
    for t in range(s.n_active):
        j = s.active[t]
        s.z1t[j * BLOCK + r] = s.z1[j]
        s.act_rows[j * BLOCK + s.act_n[j]] = r
        s.act_n[j] = s.act_n[j] + 1
    memset(d1, 0, h * sizeof(double))
    for t in range(s.n_active):  # inactive units keep d1 = 0 (the ReLU derivative)
        j = s.active[t]
        d1[j] = dot4(net.w2 + j * k, d2, k)
    for j in range(h):
        g.b1[j] = g.b1[j] + d1[j]
    for l in range(net.d):
        s.xt[l * BLOCK + r] = xr[l]


cdef void flush_block(const Net* net, Scratch* s, Grad* g, Py_ssize_t n_rows) noexcept nogil:
    """Add the block's n_rows rows to the weight gradients, in row order; reset the block."""
    cdef Py_ssize_t l, j, h = net.h, k = net.k
    for j in range(h):
        accumulate_rows(g.w2 + j * k, k, s.z1t + j * BLOCK, s.d2b, s.act_rows + j * BLOCK,
                        s.act_n[j])
        s.act_n[j] = 0
    for l in range(net.d):
        accumulate_rows(g.w1 + l * h, h, s.xt + l * BLOCK, s.d1b, s.iota, n_rows)


cdef uint64_t splitmix64(uint64_t* state) noexcept nogil:
    """Next output of the SplitMix64 stream (reference.splitmix64 mirrors it)."""
    cdef uint64_t z
    state[0] = state[0] + <uint64_t>0x9E3779B97F4A7C15
    z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


# ------------------------------------------------------------------------- batch-level loops


cdef void batch_gradient(const Net* net, const double* x, const int64_t* y,
                         const int64_t* rows, Py_ssize_t n_rows, Grad* g,
                         Scratch* s) noexcept nogil:
    """g = summed gradient over x[rows[0..n_rows)] (rows NULL: rows 0..n_rows in order)."""
    cdef Py_ssize_t t, i, d = net.d, h = net.h, k = net.k
    cdef const double* xr
    cdef double m
    memset(g.w1, 0, d * h * sizeof(double))
    memset(g.b1, 0, h * sizeof(double))
    memset(g.w2, 0, h * k * sizeof(double))
    memset(g.b2, 0, k * sizeof(double))
    for t in range(n_rows):
        i = rows[t] if rows != NULL else t
        xr = x + i * d
        m = forward_row(net, xr, s)
        softmax_row(s.z2, m, k)
        s.z2[y[i]] = s.z2[y[i]] - 1.0
        backward_row(net, xr, s, g, t % BLOCK)
        if t % BLOCK == BLOCK - 1 or t == n_rows - 1:
            flush_block(net, s, g, t % BLOCK + 1)


cdef void momentum_step(double* w, double* v, const double* g, Py_ssize_t size,
                        double eta, double mu) noexcept nogil:
    """v = mu * v + g; w -= eta * v (mu = 0 gives exactly w -= eta * g)."""
    cdef Py_ssize_t i
    for i in range(size):
        v[i] = mu * v[i] + g[i]
        w[i] = w[i] - eta * v[i]


cdef void shuffle(int64_t* order, Py_ssize_t n, uint64_t* state) noexcept nogil:
    """Fisher-Yates over the current order, drawing from the SplitMix64 stream."""
    cdef Py_ssize_t i, j
    cdef int64_t tmp
    for i in range(n - 1, 0, -1):
        j = <Py_ssize_t>(splitmix64(state) % <uint64_t>(i + 1))
        tmp = order[i]
        order[i] = order[j]
        order[j] = tmp


# ---------------------------------------------------------------------- Python entry points


cdef class _Work:
    """Owns the numpy buffers behind a Scratch, so its pointers stay valid."""
    cdef object z1, active, iota, z2, xt, d1b, d2b, z1t, act_rows, act_n
    cdef Net net
    cdef Scratch s

    def __cinit__(self, const double[:, ::1] w1, const double[::1] b1,
                  const double[:, ::1] w2, const double[::1] b2):
        cdef Py_ssize_t h = w1.shape[1], k = w2.shape[1]
        cdef double[::1] z1, z2, xt, d1b, d2b, z1t
        cdef Py_ssize_t[::1] active, iota, act_rows, act_n
        cdef Py_ssize_t d = w1.shape[0]
        self.z1 = z1 = np.empty(h)
        self.active = active = np.empty(h, dtype=np.intp)
        self.iota = iota = np.arange(max(d, h, k, BLOCK), dtype=np.intp)
        self.xt = xt = np.empty(d * BLOCK)
        self.d1b = d1b = np.empty(BLOCK * h)
        self.d2b = d2b = np.empty(BLOCK * k)
        self.z1t = z1t = np.empty(h * BLOCK)
        self.act_rows = act_rows = np.empty(h * BLOCK, dtype=np.intp)
        self.act_n = act_n = np.zeros(h, dtype=np.intp)
        self.z2 = z2 = np.empty(k)
        self.net.d = w1.shape[0]
        self.net.h = h
        self.net.k = k
        # Read-only entry points never write through these; train() passes writable arrays.
        self.net.w1 = <double*>&w1[0, 0]
        self.net.b1 = <double*>&b1[0]
        self.net.w2 = <double*>&w2[0, 0]
        self.net.b2 = <double*>&b2[0]
        self.s.z1 = &z1[0]
        self.s.active = &active[0]
        self.s.iota = &iota[0]
        self.s.n_active = 0
        self.s.z2 = &z2[0]
        self.s.xt = &xt[0]
        self.s.d1b = &d1b[0]
        self.s.d2b = &d2b[0]
        self.s.z1t = &z1t[0]
        self.s.act_rows = &act_rows[0]
        self.s.act_n = &act_n[0]


cdef Grad grad_view(double[:, ::1] w1, double[::1] b1, double[:, ::1] w2, double[::1] b2):
    cdef Grad g
    g.w1 = &w1[0, 0]
    g.b1 = &b1[0]
    g.w2 = &w2[0, 0]
    g.b2 = &b2[0]
    return g


def train(const double[:, ::1] x, const int64_t[::1] y,          # IN
          double[:, ::1] w1, double[::1] b1,                      # IN/OUT
          double[:, ::1] w2, double[::1] b2,                      # IN/OUT
          Py_ssize_t epochs, double eta, Py_ssize_t batch_size, double momentum,
          uint64_t seed):
    """Train in place: epochs of (mini-)batch descent, step = eta * summed gradient.

    batch_size 0 means full batch with rows in order; otherwise rows are reshuffled each
    epoch from `seed` and the last batch of an epoch may be short. Shapes are trusted.
    """
    cdef Py_ssize_t n = x.shape[0], d = w1.shape[0], h = w1.shape[1], k = w2.shape[1]
    cdef Py_ssize_t epoch, start, size, step = batch_size if batch_size > 0 else n
    cdef uint64_t state = seed
    cdef _Work work = _Work(w1, b1, w2, b2)
    grads = [np.zeros((d, h)), np.zeros(h), np.zeros((h, k)), np.zeros(k)]
    cdef Grad g = grad_view(grads[0], grads[1], grads[2], grads[3])
    velocities = [np.zeros((d, h)), np.zeros(h), np.zeros((h, k)), np.zeros(k)]
    cdef Grad v = grad_view(velocities[0], velocities[1], velocities[2], velocities[3])
    cdef int64_t[::1] order = np.arange(n, dtype=np.int64)
    cdef int64_t* rows = &order[0] if batch_size > 0 else NULL
    cdef Net* net = &work.net
    with nogil:
        for epoch in range(epochs):
            if rows != NULL:
                shuffle(rows, n, &state)
            start = 0
            while start < n:
                size = min(step, n - start)
                batch_gradient(net, &x[0, 0], &y[0], rows + start if rows != NULL else NULL,
                               size, &g, &work.s)
                momentum_step(net.w1, v.w1, g.w1, d * h, eta, momentum)
                momentum_step(net.b1, v.b1, g.b1, h, eta, momentum)
                momentum_step(net.w2, v.w2, g.w2, h * k, eta, momentum)
                momentum_step(net.b2, v.b2, g.b2, k, eta, momentum)
                start = start + size


def gradient(const double[:, ::1] x, const int64_t[::1] y,                      # IN
             const double[:, ::1] w1, const double[::1] b1,                      # IN
             const double[:, ::1] w2, const double[::1] b2,                      # IN
             double[:, ::1] gw1, double[::1] gb1,                                # OUT
             double[:, ::1] gw2, double[::1] gb2):                               # OUT
    """Summed gradient over all rows in order (the full-batch step's gradient)."""
    cdef _Work work = _Work(w1, b1, w2, b2)
    cdef Grad g = grad_view(gw1, gb1, gw2, gb2)
    with nogil:
        batch_gradient(&work.net, &x[0, 0], &y[0], NULL, x.shape[0], &g, &work.s)


def forward(const double[:, ::1] x,                                                # IN
            const double[:, ::1] w1, const double[::1] b1,                         # IN
            const double[:, ::1] w2, const double[::1] b2,                         # IN
            double[:, ::1] proba):                                                 # OUT (n, k)
    """Softmax class probabilities for every row."""
    cdef Py_ssize_t i, k = w2.shape[1]
    cdef _Work work = _Work(w1, b1, w2, b2)
    cdef double m
    with nogil:
        for i in range(x.shape[0]):
            m = forward_row(&work.net, &x[i, 0], &work.s)
            softmax_row(work.s.z2, m, k)
            memcpy(&proba[i, 0], work.s.z2, k * sizeof(double))


def predict(const double[:, ::1] x,                                                # IN
            const double[:, ::1] w1, const double[::1] b1,                         # IN
            const double[:, ::1] w2, const double[::1] b2,                         # IN
            int64_t[::1] labels):                                                  # OUT (n,)
    """Most probable class per row (first maximum wins, as numpy.argmax)."""
    cdef Py_ssize_t i, c
    cdef _Work work = _Work(w1, b1, w2, b2)
    cdef double m
    with nogil:
        for i in range(x.shape[0]):
            m = forward_row(&work.net, &x[i, 0], &work.s)
            c = 0
            while work.s.z2[c] != m:
                c = c + 1
            labels[i] = c


def summed_loss(const double[:, ::1] x, const int64_t[::1] y,                     # IN
                const double[:, ::1] w1, const double[::1] b1,                     # IN
                const double[:, ::1] w2, const double[::1] b2):                    # IN
    """Cross-entropy summed over rows: log(sum(exp(z - max))) - (z[y] - max)."""
    cdef Py_ssize_t i, c, k = w2.shape[1]
    cdef _Work work = _Work(w1, b1, w2, b2)
    cdef double m, total = 0.0, sum_exp
    with nogil:
        for i in range(x.shape[0]):
            m = forward_row(&work.net, &x[i, 0], &work.s)
            sum_exp = 0.0
            for c in range(k):
                sum_exp = sum_exp + exp_nonpos(work.s.z2[c] - m)
            total = total + (log(sum_exp) - (work.s.z2[y[i]] - m))
    return total


def exp_nonpos_array(const double[::1] t, double[::1] out):                # IN, OUT
    """out = exp(t) for t <= 0 with the kernels' own exp (exposed for accuracy tests)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(t.shape[0]):
            out[i] = exp_nonpos(t[i])
