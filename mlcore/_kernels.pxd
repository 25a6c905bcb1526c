# Declarations for the MLP kernels in _kernels.pyx; the design comment lives there.
from libc.stdint cimport int64_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* exp(t) for t <= 0 (softmax arguments are logit - max) from +, -, * and a bit
       shift only, so the bits depend on IEEE-754 alone, not on the libm version or
       the CPU's libm code path. Cody-Waite reduction t = k ln2 + r, |r| <= ln2/2, then
       Taylor to r^13 (truncation < 1e-17 relative), then scale by 2^k built in the
       exponent bits. Needs t >= -708 (2^k stays normal): mlcore_exp_nonpos clamps,
       mlcore_exp_nonpos_unclamped has no branch so gcc can vectorise loops over it. */
    static inline double mlcore_exp_nonpos_unclamped(double t)
    {
        const double magic = 6755399441055744.0;   /* 1.5 * 2^52: x + magic rounds x */
        double kd, k, r, r2, r4, r8, p, scale;
        uint64_t bits;
        kd = t * 1.4426950408889634 + magic;
        k = kd - magic;
        r = (t - k * 0.693147180369123816490) - k * 1.90821492927058770002e-10;
        /* Estrin's scheme: a short dependency chain, so vector lanes and loop iterations
           overlap instead of waiting on 13 chained multiply-adds (Horner). */
        r2 = r * r;
        r4 = r2 * r2;
        r8 = r4 * r4;
        p = 1.0 + (r + ((0.5 + r * (1.0 / 6.0)) * r2
                        + ((1.0 / 24.0 + r * (1.0 / 120.0))
                           + (1.0 / 720.0 + r * (1.0 / 5040.0)) * r2) * r4
                        + (((1.0 / 40320.0 + r * (1.0 / 362880.0))
                            + (1.0 / 3628800.0 + r * (1.0 / 39916800.0)) * r2)
                           + (1.0 / 479001600.0 + r * (1.0 / 6227020800.0)) * r4) * r8));
        memcpy(&bits, &kd, sizeof bits);           /* low bits of kd hold 2^51 + k */
        bits = (bits + 1023u) << 52;               /* exponent field k + 1023: 2^k */
        memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }

    /* v > 0 decided on the bits (positive doubles are positive int64s): an integer
       compare, so no float compare stands in the way of branch-free code. */
    static inline int mlcore_positive(double v)
    {
        int64_t bits;
        memcpy(&bits, &v, sizeof bits);
        return bits > 0;
    }

    static inline double mlcore_exp_nonpos(double t)
    {
        return mlcore_exp_nonpos_unclamped(t < -708.0 ? -708.0 : t);  /* exp(-708) ~ 3e-308 */
    }
    """
    double exp_nonpos "mlcore_exp_nonpos"(double t) noexcept nogil
    double exp_nonpos_unclamped "mlcore_exp_nonpos_unclamped"(double t) noexcept nogil
    int positive "mlcore_positive"(double v) noexcept nogil


cdef struct Net:
    # Borrowed pointers into the caller's C-contiguous arrays.
    Py_ssize_t d, h, k
    double* w1   # (d, h)
    double* b1   # (h,)
    double* w2   # (h, k)
    double* b2   # (k,)


cdef struct Grad:
    # Summed gradients, same layout as the Net tensors.
    double* w1
    double* b1
    double* w2
    double* b2


cdef struct Scratch:
    # Per-row work vectors, allocated once per kernel call.
    double* z1            # (h,) hidden pre-activations
    Py_ssize_t* active    # (h,) indices j with z1[j] > 0, first n_active valid
    Py_ssize_t n_active
    Py_ssize_t* iota      # (max(d, h, k),) 0, 1, 2, ...: "all rows in order" for accumulate_rows
    double* z2            # (k,) logits, then probabilities, then p - onehot(y)
    # Row block (BLOCK rows) whose weight gradients are added in one register-tiled pass:
    double* xt            # (d, BLOCK) the block's inputs, transposed
    double* d1b           # (BLOCK, h) d1 per row (0 at inactive units)
    double* d2b           # (BLOCK, k) p - onehot(y) per row
    double* z1t           # (h, BLOCK) z1 per row, transposed
    Py_ssize_t* act_rows  # (h, BLOCK) per hidden unit, the block rows where it is active
    Py_ssize_t* act_n     # (h,) how many of them


cdef double forward_row(const Net* net, const double* xr, Scratch* s) noexcept nogil
cdef void softmax_row(double* z2, double m, Py_ssize_t k) noexcept nogil
cdef void backward_row(const Net* net, const double* xr, Scratch* s, Grad* g,
                       Py_ssize_t r) noexcept nogil
cdef void flush_block(const Net* net, Scratch* s, Grad* g, Py_ssize_t n_rows) noexcept nogil
cdef uint64_t splitmix64(uint64_t* state) noexcept nogil
