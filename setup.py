"""Build the Cython MLP kernels; everything else lives in pyproject.toml."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 lets gcc vectorise the inner loops; no -ffast-math: it would reorder
# floating-point sums and break bitwise reproducibility; no contraction of a * b + c into a
# fused multiply-add by the compiler (gcc's default under the kernels' FMA targets): the
# kernels write every fused multiply-add they use (FMA in mlcore/_mlp_impl.h, the C
# library's fma() on the SSE2 path), and an operation gcc fused on one path only would give
# that path other bits. The same flags are set in mlcore/_kernels.pyx, whose `# distutils:`
# lines are the ones cythonize passes to gcc.
extensions = [
    Extension(
        "mlcore._kernels",
        ["mlcore/_kernels.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
        libraries=["m"],  # fma(), the SSE2 path's correctly rounded fused multiply-add
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
