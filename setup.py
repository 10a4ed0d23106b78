"""The C kernels of the native CPU backend, compiled into the wheel (everything else is in pyproject.toml).

A portable build (no -march=native): cadyq still compiles quant.c for the running CPU on first use where a C
compiler exists (`cadyq.kernels.cpu.build`), and uses this prebuilt library where none does. `optional=True`:
an install on a machine without a compiler goes on without it (the kernels then fall back to torch).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "cadyq.kernels.cpu._cadyq_cpu", ["cadyq/kernels/cpu/quant.c"],
    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp-simd", "-std=c11"],
    libraries=["m"], optional=True)])
