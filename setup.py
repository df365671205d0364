"""Builds evilbench._C: CPU kernels always, CUDA kernels when a CUDA torch and toolkit are present.

EVILBENCH_CUDA=auto (default) | 1 (force, fail if impossible) | 0 (CPU only).
EVILBENCH_NATIVE=1 adds -march=native (local builds only; never for shared wheels).
GPU users: pip install --no-build-isolation -e .   (uses the torch already installed)
"""
import glob
import os
import sys
import sysconfig
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def _want_cuda() -> bool:
    mode = os.environ.get("EVILBENCH_CUDA", "auto").strip().lower()
    have = torch.version.cuda is not None and CUDA_HOME is not None
    if mode in ("0", "off", "false", "no"):
        return False
    if mode in ("1", "on", "true", "yes"):
        if not have:
            raise RuntimeError(
                "EVILBENCH_CUDA=1 but no CUDA build is possible: "
                f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}"
            )
        return True
    return have


def _openmp_link_args() -> list[str]:
    """at::parallel_for is an inline `#pragma omp parallel` in an OpenMP build of torch: without
    -fopenmp the extension's loops silently run on one thread (tests/test_build.py checks). Link the
    libgomp that torch ships when it ships one (the CPU wheel's libgomp.so.1, or a renamed
    libgomp-<hash>.so.1), so the process keeps a single OpenMP runtime and thread pool."""
    bundled = sorted(Path(torch.__file__).resolve().parent.joinpath("lib").glob("libgomp*.so*"))
    return [str(bundled[0])] if bundled else ["-fopenmp"]


def _extension():
    cuda = _want_cuda()
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # torch >= 2.10 headers use C++20 (bit-field initialisers). -g0 overrides the -g in Python's own
    # CFLAGS: debug info for torch's templates made the build ~1.5x slower (80 s -> 54 s for the
    # Newton-Schulz file on one core)
    cxx = ["-O3", "-std=c++20", "-g0"]
    if os.environ.get("EVILBENCH_NATIVE") == "1":
        cxx.append("-march=native")
    link = []
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link += _openmp_link_args()
    if not cuda:
        return CppExtension("evilbench._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
    return CUDAExtension(
        "evilbench._C",
        sources,
        define_macros=[("EVILBENCH_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=link,
    )


class _BuildExt(BuildExtension.with_options(use_ninja=True)):
    """Object files live in ./build/temp-<platform>-<python>-torch<version> for every kind of build.
    pip's editable installs would otherwise compile in a fresh temporary directory each time; here
    ninja recompiles only what changed, so reinstalling an unchanged tree (say, with more extras)
    relinks in seconds instead of recompiling for minutes."""

    def finalize_options(self):
        super().finalize_options()
        tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}-torch{torch.__version__}"
        self.build_temp = str(Path(__file__).resolve().parent / "build" / f"temp-{tag}")


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": _BuildExt},
)
