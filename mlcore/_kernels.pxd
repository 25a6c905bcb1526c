# Declarations of the C kernels in _mlp.h / _mlp_impl.h; the design comment lives there and
# in _kernels.pyx.
from libc.stdint cimport int64_t, uint64_t


cdef extern from "_mlp.h" nogil:
    ctypedef struct mlcore_net:
        Py_ssize_t d, h, k, hp, kp
        double* w1
        double* b1
        double* w2
        double* b2
        double* gw1
        double* gb1
        double* gw2
        double* gb2
        void* mem

    ctypedef Py_ssize_t (*mlcore_train_fn)(mlcore_net*, const double*, const int64_t*,
                                           Py_ssize_t, Py_ssize_t, double, Py_ssize_t, double,
                                           double, uint64_t, double)
    ctypedef void (*mlcore_gradient_fn)(mlcore_net*, const double*, const int64_t*, Py_ssize_t)
    ctypedef void (*mlcore_evaluate_fn)(mlcore_net*, const double*, const int64_t*, Py_ssize_t,
                                        double*, int64_t*, double*)
    ctypedef void (*mlcore_exp_fn)(const double*, double*, Py_ssize_t)

    ctypedef struct mlcore_isa_t:
        const char* name
        mlcore_train_fn train
        mlcore_gradient_fn gradient
        mlcore_evaluate_fn evaluate
        mlcore_exp_fn exp_array

    const int MLCORE_N_ISA
    const mlcore_isa_t mlcore_isas[]
    int mlcore_isa_supported(int i)
    int mlcore_best_isa()

    const int MLCORE_NEED_GRAD
    const int MLCORE_NEED_VELOCITY
    const int MLCORE_NEED_LOW_RANK
    const int MLCORE_NEED_PROX
    int mlcore_low_rank_pays(Py_ssize_t d, Py_ssize_t h, Py_ssize_t rows)
    int mlcore_net_alloc(mlcore_net* net, Py_ssize_t d, Py_ssize_t h, Py_ssize_t k, int need,
                         Py_ssize_t n_order, Py_ssize_t batch_rows, double* w1_own)
    void mlcore_net_free(mlcore_net* net)
    void mlcore_net_load(mlcore_net* net, const double* w1, const double* b1,
                         const double* w2, const double* b2)
    void mlcore_net_load_anchor(mlcore_net* net, const double* w1, const double* b1,
                                const double* w2, const double* b2)
    void mlcore_net_unload(const mlcore_net* net, const double* t1, const double* t2,
                           const double* t3, const double* t4, double* w1, double* b1,
                           double* w2, double* b2)
    double mlcore_exp_nonpos(double t)
