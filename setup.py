"""Build the Cython MLP kernels; everything else lives in pyproject.toml."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 lets gcc vectorise the inner loops; no -ffast-math: it would reorder
# floating-point sums and break bitwise reproducibility.
extensions = [
    Extension(
        "mlcore._kernels",
        ["mlcore/_kernels.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", "-fno-fast-math"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
