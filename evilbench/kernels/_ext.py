"""Loads the compiled extension evilbench._C, which registers the torch.ops.evilbench.* operators."""
from __future__ import annotations

import functools


@functools.cache
def load():
    """Import evilbench._C once; raise a clear error when the package was not built."""
    import torch  # noqa: F401  (loads libc10/libtorch that _C links against)

    try:
        from evilbench import _C  # noqa: F401  (import registers the ops)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            f"evilbench._C could not be imported ({exc}). Build it with "
            "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`)."
        ) from exc
    return _C


def with_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return bool(load().with_cuda)
