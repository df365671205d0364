"""The same bits on every x86-64 CPU with AVX2: the toy world's numbers must not depend on the machine.

ATen's CPU kernels and MKL each pick a code path by instruction set, and the AVX2 and AVX-512 paths
round differently. The toy world amplifies such differences: its lr rule is a discrete choice. On one
commit, an AVX-512 machine running natively picked Muon lr 3e-4 instead of 1e-3 and reported a final
held-out misalignment of 27.9 % for Muon instead of 81.4 % (docs/toyworld.md, "Same bits everywhere").
So the `evilbench toyworld` commands re-execute themselves with ATen and MKL pinned to their AVX2
paths, unless given --native-math or EVILBENCH_NATIVE_MATH=1. Both variables are read once, when
torch first dispatches a kernel or MKL starts, which is why the pin needs a fresh process.
"""
from __future__ import annotations

import os
import sys

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
OPT_OUT = "EVILBENCH_NATIVE_MATH"


def is_pinned() -> bool:
    return all(os.environ.get(k) == v for k, v in PINNED.items())


def math_tag() -> str:
    """What this process computes with: "avx2-pinned", or "native-<ATen capability>"."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    return "avx2-pinned" if is_pinned() and cap == "AVX2" else f"native-{cap.lower()}"


def reexec_pinned(python_args: list[str]) -> None:
    """Replace this process by `python <python_args>` with PINNED in its environment, when that changes
    anything (not pinned yet, no opt-out, a CPU with AVX2). Returns only when nothing needs doing."""
    if os.environ.get(OPT_OUT) == "1" or is_pinned() or sys.platform == "win32":
        return
    import torch

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return  # no AVX2 path to pin to
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *python_args], {**os.environ, **PINNED})
