# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Cython kernels for the d -> h -> k ReLU/softmax MLP (see mlcore/reference.py for the maths).

Why the kernels look like this:

* Bitwise reproducibility first. Every sum runs in one fixed order (rows in the given order,
  features/units/classes in index order), and no loop reassociates a reduction: gcc vectorises
  only element-wise loops (setup.py builds without -ffast-math). So the same inputs give the
  same bits in every run, process and thread count. No BLAS: its blocking and threading change
  the summation order. exp() is our own (exp_nonpos in _kernels.pxd), built from +, -, *
  only, so the bits do not depend on the libm version or on which libm code path a CPU takes.
* Fused per row. For each row the forward pass, softmax, backward pass and the accumulation
  into the summed gradient run back to back on h- and k-sized scratch vectors that stay in L1;
  no (n, h) or (n, k) temporaries are ever built, unlike the numpy reference.
* Loop orders gcc can vectorise: every innermost loop runs over a contiguous h or k axis and
  is an axpy (y[j] += a * x[j]), never a dot product (a dot product is a reduction and would
  stay scalar without reassociation). That is why the backward pass keeps w2t, a (k, h)
  transposed copy of w2, refreshed after each step.
* ReLU sparsity: hidden units with a1 == 0 contribute nothing to the second layer or to the
  backward pass, so their rows are skipped (and zero input features likewise). Skipping
  only drops exact zero terms, so results are unchanged up to the sign of zero.
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


cdef void hidden_row(const Net* net, const double* xr, double* a1) noexcept nogil:
    """a1 = relu(xr @ w1 + b1) for one row."""
    cdef Py_ssize_t l, j, h = net.h
    cdef double xl
    cdef const double* w
    memcpy(a1, net.b1, h * sizeof(double))
    for l in range(net.d):
        xl = xr[l]
        if xl != 0.0:
            w = net.w1 + l * h
            for j in range(h):
                a1[j] = a1[j] + xl * w[j]
    for j in range(h):
        a1[j] = a1[j] if a1[j] > 0.0 else 0.0


cdef double logits_row(const Net* net, const double* a1, double* z2) noexcept nogil:
    """z2 = a1 @ w2 + b2 for one row; returns max(z2)."""
    cdef Py_ssize_t j, c, k = net.k
    cdef double aj, m
    cdef const double* w
    memcpy(z2, net.b2, k * sizeof(double))
    for j in range(net.h):
        aj = a1[j]
        if aj > 0.0:
            w = net.w2 + j * k
            for c in range(k):
                z2[c] = z2[c] + aj * w[c]
    m = z2[0]
    for c in range(1, k):
        if z2[c] > m:
            m = z2[c]
    return m


cdef void softmax_row(double* z2, double m, Py_ssize_t k) noexcept nogil:
    """z2 <- softmax(z2) in place, given m = max(z2)."""
    cdef Py_ssize_t c
    cdef double s = 0.0
    for c in range(k):
        z2[c] = exp_nonpos(z2[c] - m)
    for c in range(k):
        s = s + z2[c]
    for c in range(k):
        z2[c] = z2[c] / s


cdef void backward_row(const Net* net, const double* xr, const double* a1, const double* d2,
                       double* d1, Grad* g) noexcept nogil:
    """Add one row's gradient to g, given d2 = p - onehot(y); d1 is (h,) scratch."""
    cdef Py_ssize_t l, j, c, h = net.h, k = net.k
    cdef double aj, dc, xl
    cdef double* gw
    cdef const double* w
    for c in range(k):
        g.b2[c] = g.b2[c] + d2[c]
    for j in range(h):
        aj = a1[j]
        if aj > 0.0:
            gw = g.w2 + j * k
            for c in range(k):
                gw[c] = gw[c] + aj * d2[c]
    memset(d1, 0, h * sizeof(double))
    for c in range(k):
        dc = d2[c]
        w = net.w2t + c * h
        for j in range(h):
            d1[j] = d1[j] + dc * w[j]
    for j in range(h):
        d1[j] = d1[j] if a1[j] > 0.0 else 0.0
        g.b1[j] = g.b1[j] + d1[j]
    for l in range(net.d):
        xl = xr[l]
        if xl != 0.0:
            gw = g.w1 + l * h
            for j in range(h):
                gw[j] = gw[j] + xl * d1[j]


cdef uint64_t splitmix64(uint64_t* state) noexcept nogil:
    """Next output of the SplitMix64 stream (reference.splitmix64 mirrors it)."""
    cdef uint64_t z
    state[0] = state[0] + <uint64_t>0x9E3779B97F4A7C15
    z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


# ------------------------------------------------------------------------- batch-level loops


cdef void transpose(const double* a, Py_ssize_t rows, Py_ssize_t cols, double* out) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(rows):
        for j in range(cols):
            out[j * rows + i] = a[i * cols + j]


cdef void batch_gradient(const Net* net, const double* x, const int64_t* y,
                         const int64_t* rows, Py_ssize_t n_rows, Grad* g,
                         double* a1, double* z2, double* d1) noexcept nogil:
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
        hidden_row(net, xr, a1)
        m = logits_row(net, a1, z2)
        softmax_row(z2, m, k)
        z2[y[i]] = z2[y[i]] - 1.0
        backward_row(net, xr, a1, z2, d1, g)


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


cdef Net make_net(const double[:, ::1] w1, const double[::1] b1,
                  const double[:, ::1] w2, const double[::1] b2, double[:, ::1] w2t):
    """Point a Net at the tensors (read-only callers never write through it)."""
    cdef Net net
    net.d = w1.shape[0]
    net.h = w1.shape[1]
    net.k = w2.shape[1]
    net.w1 = <double*>&w1[0, 0]
    net.b1 = <double*>&b1[0]
    net.w2 = <double*>&w2[0, 0]
    net.b2 = <double*>&b2[0]
    net.w2t = &w2t[0, 0]
    transpose(net.w2, net.h, net.k, net.w2t)
    return net


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
    cdef Py_ssize_t epoch, start, size, step
    cdef uint64_t state = seed
    w2t_arr = np.empty((k, h))
    cdef Net net = make_net(w1, b1, w2, b2, w2t_arr)
    grad_arr = [np.zeros((d, h)), np.zeros(h), np.zeros((h, k)), np.zeros(k)]
    vel_arr = [np.zeros((d, h)), np.zeros(h), np.zeros((h, k)), np.zeros(k)]
    cdef double[:, ::1] gw1 = grad_arr[0], gw2 = grad_arr[2], vw1 = vel_arr[0], vw2 = vel_arr[2]
    cdef double[::1] gb1 = grad_arr[1], gb2 = grad_arr[3], vb1 = vel_arr[1], vb2 = vel_arr[3]
    cdef double[::1] a1 = np.empty(h), d1 = np.empty(h), z2 = np.empty(k)
    cdef int64_t[::1] order = np.arange(n, dtype=np.int64)
    cdef int64_t* rows = &order[0] if batch_size > 0 else NULL
    cdef int64_t* batch_rows
    cdef Grad g
    g.w1 = &gw1[0, 0]
    g.b1 = &gb1[0]
    g.w2 = &gw2[0, 0]
    g.b2 = &gb2[0]
    step = batch_size if batch_size > 0 else n
    with nogil:
        for epoch in range(epochs):
            if rows != NULL:
                shuffle(rows, n, &state)
            start = 0
            while start < n:
                size = min(step, n - start)
                batch_rows = rows + start if rows != NULL else NULL
                batch_gradient(&net, &x[0, 0], &y[0], batch_rows, size, &g,
                               &a1[0], &z2[0], &d1[0])
                momentum_step(net.w1, &vw1[0, 0], g.w1, d * h, eta, momentum)
                momentum_step(net.b1, &vb1[0], g.b1, h, eta, momentum)
                momentum_step(net.w2, &vw2[0, 0], g.w2, h * k, eta, momentum)
                momentum_step(net.b2, &vb2[0], g.b2, k, eta, momentum)
                transpose(net.w2, h, k, net.w2t)
                start = start + size


def gradient(const double[:, ::1] x, const int64_t[::1] y,                      # IN
             const double[:, ::1] w1, const double[::1] b1,                      # IN
             const double[:, ::1] w2, const double[::1] b2,                      # IN
             double[:, ::1] gw1, double[::1] gb1,                                # OUT
             double[:, ::1] gw2, double[::1] gb2):                               # OUT
    """Summed gradient over all rows in order (the full-batch step's gradient)."""
    cdef Py_ssize_t n = x.shape[0]
    w2t_arr = np.empty((w2.shape[1], w2.shape[0]))  # kept alive: the Net points into it
    cdef Net net = make_net(w1, b1, w2, b2, w2t_arr)
    cdef double[::1] a1 = np.empty(net.h), d1 = np.empty(net.h), z2 = np.empty(net.k)
    cdef Grad g
    g.w1 = &gw1[0, 0]
    g.b1 = &gb1[0]
    g.w2 = &gw2[0, 0]
    g.b2 = &gb2[0]
    with nogil:
        batch_gradient(&net, &x[0, 0], &y[0], NULL, n, &g, &a1[0], &z2[0], &d1[0])


def forward(const double[:, ::1] x,                                                # IN
            const double[:, ::1] w1, const double[::1] b1,                         # IN
            const double[:, ::1] w2, const double[::1] b2,                         # IN
            double[:, ::1] proba):                                                 # OUT (n, k)
    """Softmax class probabilities for every row."""
    cdef Py_ssize_t i, n = x.shape[0]
    w2t_arr = np.empty((w2.shape[1], w2.shape[0]))  # kept alive: the Net points into it
    cdef Net net = make_net(w1, b1, w2, b2, w2t_arr)
    cdef double[::1] a1 = np.empty(net.h)
    cdef double m
    with nogil:
        for i in range(n):
            hidden_row(&net, &x[i, 0], &a1[0])
            m = logits_row(&net, &a1[0], &proba[i, 0])
            softmax_row(&proba[i, 0], m, net.k)


def predict(const double[:, ::1] x,                                                # IN
            const double[:, ::1] w1, const double[::1] b1,                         # IN
            const double[:, ::1] w2, const double[::1] b2,                         # IN
            int64_t[::1] labels):                                                  # OUT (n,)
    """Most probable class per row (first maximum wins, as numpy.argmax)."""
    cdef Py_ssize_t i, c, best, n = x.shape[0]
    w2t_arr = np.empty((w2.shape[1], w2.shape[0]))  # kept alive: the Net points into it
    cdef Net net = make_net(w1, b1, w2, b2, w2t_arr)
    cdef double[::1] a1 = np.empty(net.h), z2 = np.empty(net.k)
    cdef double m
    with nogil:
        for i in range(n):
            hidden_row(&net, &x[i, 0], &a1[0])
            m = logits_row(&net, &a1[0], &z2[0])
            best = 0
            for c in range(net.k):
                if z2[c] == m:
                    best = c
                    break
            labels[i] = best


def summed_loss(const double[:, ::1] x, const int64_t[::1] y,                     # IN
                const double[:, ::1] w1, const double[::1] b1,                     # IN
                const double[:, ::1] w2, const double[::1] b2):                    # IN
    """Cross-entropy summed over rows: log(sum(exp(z - max))) - (z[y] - max)."""
    cdef Py_ssize_t i, c, n = x.shape[0]
    w2t_arr = np.empty((w2.shape[1], w2.shape[0]))  # kept alive: the Net points into it
    cdef Net net = make_net(w1, b1, w2, b2, w2t_arr)
    cdef double[::1] a1 = np.empty(net.h), z2 = np.empty(net.k)
    cdef double m, s, total = 0.0
    with nogil:
        for i in range(n):
            hidden_row(&net, &x[i, 0], &a1[0])
            m = logits_row(&net, &a1[0], &z2[0])
            s = 0.0
            for c in range(net.k):
                s = s + exp_nonpos(z2[c] - m)
            total = total + (log(s) - (z2[y[i]] - m))
    return total


def exp_nonpos_array(const double[::1] t, double[::1] out):                # IN, OUT
    """out = exp(t) for t <= 0 with the kernels' own exp (exposed for accuracy tests)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(t.shape[0]):
            out[i] = exp_nonpos(t[i])
