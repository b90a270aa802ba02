"""Builds hgattn's native CPU kernel (plain C with OpenMP, loaded with ctypes) for the CPU it is built on
(``-march=native``: the package is built from source where it runs); everything else is in
pyproject.toml. The extension is optional: without a C compiler hgattn installs and runs on its PyTorch
kernels."""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "hgattn.attention._native",
    sources=["hgattn/attention/csrc/hsa_native.c"],
    depends=["hgattn/attention/csrc/hsa_kernel.h"],
    extra_compile_args=["-O3", "-march=native", "-fopenmp", "-std=c11"],
    extra_link_args=["-fopenmp"],
    optional=True,
)])
