# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# distutils: extra_compile_args = -O3 -ffp-contract=off -fno-fast-math
# distutils: libraries = m
# distutils: depends = mlcore/_mlp.h mlcore/_mlp_impl.h
"""Python entry points of the MLP kernels (the maths: mlcore/reference.py; the loops: _mlp.h).

Why the kernels look like this:

* Bitwise reproducibility first. Every sum runs in one fixed order, written in the C source
  (listed at the top of _mlp_impl.h), each term of a product added by one fused multiply-add
  written as such, and no loop reassociates a reduction. No BLAS: its
  blocking and threading change the summation order. exp() is our own, built from +, -, *
  only, so the bits do not depend on the libm version or on which libm code path a CPU takes.
* Vectorised by hand, one source for every instruction set. The hot loops are written with
  GCC vector types and compiled three times (SSE2 with 2-double vectors, AVX2 and AVX-512
  with 4-double vectors, the latter with 32 registers); the best path the CPU supports is chosen at import (set_isa() or the
  MLCORE_ISA environment variable override it). The paths differ in registers and
  instructions only: every operation is lane-wise IEEE arithmetic, the products' terms
  fused multiply-adds (correctly rounded, so one answer: the FMA3 instruction on AVX2 and
  AVX-512, the C library's fma() on SSE2, slow there) and nothing else fused
  (-ffp-contract=off above), so they give the same bits, and the tests check that. No
  -march flag: the module runs on any x86-64 (and on other CPUs, generic path); the AVX2
  and AVX-512 paths need the CPU's FMA3 too.
* Fused per block of rows. Forward pass, softmax and backward pass of 8-32 rows run on
  block buffers that stay in L1; no (n, h) or (n, k) temporaries. The dense products
  (x @ w1, d2 @ w2.T, x.T @ d1) are register-tiled so each weight load serves four rows.
* ReLU sparsity: about half the hidden units are off in a row; bit masks of the active
  units drive the second layer (z2 and its weight gradient), which skip exact zero terms
  only, so the bits are those of the dense sum.
* The whole training loop (all epochs, shuffles and steps) runs inside `with nogil`, so
  other Python threads (RPC health checks) keep running. A time limit is checked inside
  that loop, reading the monotonic clock between steps (MLCORE_CLOCK_WORK in _mlp.h),
  rather than by returning to Python every epoch: no GIL round trip per epoch, no cost. Shapes and dtypes are checked
  once, in mlcore/model.py, before the kernels are entered; one aligned allocation per call
  holds a padded working copy of the weights and the buffers that call needs.
* Memory: a wide model is nearly all w1 (d x h). With h a multiple of 4 the kernels work in
  the caller's w1 (train updates it in place, the other entries read it), gradients exist
  only in train and gradient(), velocities only with momentum, and when a step's rows are
  few, w1's step is summed from those rows and their hidden deltas (X^T D1, in gw1's order)
  instead of a gw1 as large as w1: training a 10M-parameter model on a few rows adds a few MB
  to the caller's two copies of the weights, not three times the model (_mlp.h).
* Mini-batch shuffling uses SplitMix64 + Fisher-Yates in C (mirrored in reference.py).
* FedProx (train's prox_mu): the proximal term's gradient prox_mu * (w - w_0) is added to
  each tensor's gradient inside the step loop (one subtract, multiply and add per element,
  lane-wise, so every path gives the same bits); prox_mu = 0 takes the loops without it.
* Prediction (forward, predict, evaluate, summed_loss) has no gradients, so no w2 transpose;
  it reads the caller's w1 in place whatever its alignment (unaligned loads) and allocates
  blocks only as large as its rows. A w1 beyond L1 is read once per block of 64 rows, and a
  call of 1-3 rows streams it row by row (a 10M-parameter model is memory-bound there). A
  row's sums never depend on the rows beside it, so batched and unbatched predictions are
  the same bits, those of reference.predict_proba / reference.predict.
"""

import os

from libc.stdint cimport int64_t, uint64_t

cdef int _isa = -1


def isa_names():
    """Names of the compiled code paths this CPU can run, slowest first."""
    return [mlcore_isas[i].name.decode() for i in range(MLCORE_N_ISA)
            if mlcore_isa_supported(i)]


def isa():
    """Name of the code path the kernels use now."""
    return mlcore_isas[_isa].name.decode()


def set_isa(name=None):
    """Use the named code path (None: the best this CPU supports); returns the previous name.

    For tests and benchmarks: every path gives the same bits, only the speed differs.
    """
    global _isa
    previous = isa() if _isa >= 0 else None
    if name is None or name == "":
        _isa = mlcore_best_isa()
        return previous
    for i in range(MLCORE_N_ISA):
        if mlcore_isas[i].name != NULL and mlcore_isas[i].name.decode() == name:
            if not mlcore_isa_supported(i):
                raise ValueError(f"code path {name!r} is not supported by this CPU")
            _isa = i
            return previous
    raise ValueError(f"unknown code path {name!r}; this build has {isa_names()}")


set_isa(os.environ.get("MLCORE_ISA") or None)


cdef class _Net:
    """Owns one mlcore_net allocation (padded weights, gradients, velocities, buffers)."""
    cdef mlcore_net net

    def __cinit__(self):
        self.net.mem = NULL

    def __dealloc__(self):
        mlcore_net_free(&self.net)


cdef _Net _net(const double[:, ::1] w1, const double[::1] b1, const double[:, ::1] w2,
               const double[::1] b2, int need=0, Py_ssize_t n_order=0,
               Py_ssize_t batch_rows=0, double* w1_own=NULL):
    """The work buffers of one call, loaded with the weights (see mlcore_net_alloc).

    w1_own: where the net may keep w1 (the caller's, used when h is a multiple of 4 and it is
    32-byte aligned); the read-only entries (need 0) pass w1 itself, which they never write
    and read in place at any alignment, and their row count as batch_rows (block size).
    """
    cdef _Net work = _Net.__new__(_Net)
    if mlcore_net_alloc(&work.net, w1.shape[0], w1.shape[1], w2.shape[1], need, n_order,
                        batch_rows, w1_own) != 0:
        raise MemoryError("cannot allocate the kernel's work buffers")
    mlcore_net_load(&work.net, &w1[0, 0], &b1[0], &w2[0, 0], &b2[0])
    return work


def train(const double[:, ::1] x, const int64_t[::1] y,          # IN
          double[:, ::1] w1, double[::1] b1,                      # IN/OUT
          double[:, ::1] w2, double[::1] b2,                      # IN/OUT
          Py_ssize_t epochs, double eta, Py_ssize_t batch_size, double momentum,
          uint64_t seed, double limit_s=0.0, low_rank=None, double prox_mu=0.0,
          const double[:, ::1] w1_0=None, const double[::1] b1_0=None,    # IN (prox_mu)
          const double[:, ::1] w2_0=None, const double[::1] b2_0=None):  # IN (prox_mu)
    """Train in place: epochs of (mini-)batch descent, step = eta * summed gradient.

    batch_size 0 means full batch with rows in order; otherwise rows are reshuffled each
    epoch from `seed` and the last batch of an epoch may be short. Shapes are trusted.
    limit_s > 0 stops between steps once that many seconds have passed (the clock is read
    inside the loop, so the GIL stays released). Returns the epochs completed: fewer than
    `epochs` means the limit stopped it and the weights are mid-training.
    low_rank (tests): force w1's step in low rank or not; None chooses by memory
    (mlcore_low_rank_pays). Either way the bits are the same.
    prox_mu != 0 (FedProx): every step's gradient of every tensor gains
    prox_mu * (w - w_0), w_0 being w1_0, b1_0, w2_0, b2_0 (the weights training started
    from, same shapes, not the arrays trained in place; w1_0 is read where it is). prox_mu
    0 ignores them and runs the loops without the term: the bits of training without it.
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t rows = min(batch_size, n) if batch_size > 0 else n
    cdef int need = MLCORE_NEED_GRAD
    if momentum != 0.0:
        need |= MLCORE_NEED_VELOCITY
    if (mlcore_low_rank_pays(w1.shape[0], w1.shape[1], rows) if low_rank is None
            else low_rank):
        need |= MLCORE_NEED_LOW_RANK
    if prox_mu != 0.0:
        if w1_0 is None or b1_0 is None or w2_0 is None or b2_0 is None:
            raise ValueError("prox_mu != 0 needs the starting weights w1_0, b1_0, w2_0, b2_0")
        if (w1_0.shape[0] != w1.shape[0] or w1_0.shape[1] != w1.shape[1]
                or b1_0.shape[0] != b1.shape[0] or w2_0.shape[0] != w2.shape[0]
                or w2_0.shape[1] != w2.shape[1] or b2_0.shape[0] != b2.shape[0]):
            raise ValueError("the starting weights must have the shapes of the weights")
        if &w1_0[0, 0] == &w1[0, 0]:
            raise ValueError("w1_0 must not be w1 itself: w1 is trained in place")
        need |= MLCORE_NEED_PROX
    cdef _Net work = _net(w1, b1, w2, b2, need, n if batch_size > 0 else 0, rows, &w1[0, 0])
    cdef mlcore_net* net = &work.net
    if prox_mu != 0.0:
        mlcore_net_load_anchor(net, &w1_0[0, 0], &b1_0[0], &w2_0[0, 0], &b2_0[0])
    cdef mlcore_train_fn fn = mlcore_isas[_isa].train
    cdef Py_ssize_t done
    with nogil:
        done = fn(net, &x[0, 0], &y[0], x.shape[0], epochs, eta, batch_size, momentum, prox_mu,
                  seed, limit_s)
        mlcore_net_unload(net, net.w1, net.b1, net.w2, net.b2,
                          &w1[0, 0], &b1[0], &w2[0, 0], &b2[0])
    return done


def gradient(const double[:, ::1] x, const int64_t[::1] y,                      # IN
             const double[:, ::1] w1, const double[::1] b1,                      # IN
             const double[:, ::1] w2, const double[::1] b2,                      # IN
             double[:, ::1] gw1, double[::1] gb1,                                # OUT
             double[:, ::1] gw2, double[::1] gb2):                               # OUT
    """Summed gradient over all rows in order (the full-batch step's gradient)."""
    cdef _Net work = _net(w1, b1, w2, b2, MLCORE_NEED_GRAD, 0, 0, <double*>&w1[0, 0])
    cdef mlcore_net* net = &work.net
    cdef mlcore_gradient_fn fn = mlcore_isas[_isa].gradient
    with nogil:
        fn(net, &x[0, 0], &y[0], x.shape[0])
        mlcore_net_unload(net, net.gw1, net.gb1, net.gw2, net.gb2,
                          &gw1[0, 0], &gb1[0], &gw2[0, 0], &gb2[0])


def evaluate(const double[:, ::1] x, const int64_t[::1] y,                       # IN
             const double[:, ::1] w1, const double[::1] b1,                       # IN
             const double[:, ::1] w2, const double[::1] b2,                       # IN
             int64_t[::1] labels):                                                # OUT (n,)
    """Most probable class per row into labels, and the summed cross-entropy (one pass)."""
    cdef _Net work = _net(w1, b1, w2, b2, 0, 0, x.shape[0], <double*>&w1[0, 0])
    cdef mlcore_evaluate_fn fn = mlcore_isas[_isa].evaluate
    cdef double total = 0.0
    with nogil:
        fn(&work.net, &x[0, 0], &y[0], x.shape[0], NULL, &labels[0], &total)
    return total


def forward(const double[:, ::1] x,                                                # IN
            const double[:, ::1] w1, const double[::1] b1,                         # IN
            const double[:, ::1] w2, const double[::1] b2,                         # IN
            double[:, ::1] proba):                                                 # OUT (n, k)
    """Softmax class probabilities for every row."""
    cdef _Net work = _net(w1, b1, w2, b2, 0, 0, x.shape[0], <double*>&w1[0, 0])
    cdef mlcore_evaluate_fn fn = mlcore_isas[_isa].evaluate
    with nogil:
        fn(&work.net, &x[0, 0], NULL, x.shape[0], &proba[0, 0], NULL, NULL)


def predict(const double[:, ::1] x,                                                # IN
            const double[:, ::1] w1, const double[::1] b1,                         # IN
            const double[:, ::1] w2, const double[::1] b2,                         # IN
            int64_t[::1] labels):                                                  # OUT (n,)
    """Most probable class per row (first maximum wins, as numpy.argmax)."""
    cdef _Net work = _net(w1, b1, w2, b2, 0, 0, x.shape[0], <double*>&w1[0, 0])
    cdef mlcore_evaluate_fn fn = mlcore_isas[_isa].evaluate
    with nogil:
        fn(&work.net, &x[0, 0], NULL, x.shape[0], NULL, &labels[0], NULL)


def summed_loss(const double[:, ::1] x, const int64_t[::1] y,                     # IN
                const double[:, ::1] w1, const double[::1] b1,                     # IN
                const double[:, ::1] w2, const double[::1] b2):                    # IN
    """Cross-entropy summed over rows: log(sum(exp(z - max))) - (z[y] - max)."""
    cdef _Net work = _net(w1, b1, w2, b2, 0, 0, x.shape[0], <double*>&w1[0, 0])
    cdef mlcore_evaluate_fn fn = mlcore_isas[_isa].evaluate
    cdef double total = 0.0
    with nogil:
        fn(&work.net, &x[0, 0], &y[0], x.shape[0], NULL, NULL, &total)
    return total


def exp_nonpos_array(const double[::1] t, double[::1] out):                # IN, OUT
    """out = exp(t) for t <= 0 with the kernels' own exp, vector form of the current path
    (exposed for accuracy tests)."""
    cdef mlcore_exp_fn fn = mlcore_isas[_isa].exp_array
    with nogil:
        fn(&t[0], &out[0], t.shape[0])


def exp_nonpos_scalar(const double[::1] t, double[::1] out):               # IN, OUT
    """out = exp(t) for t <= 0, scalar form (must equal the vector form bit for bit)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(t.shape[0]):
            out[i] = mlcore_exp_nonpos(t[i])
