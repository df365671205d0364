"""The extension builds, loads and reports how it was built."""
import torch

from evilbench.kernels import _ext


def test_extension_loads_and_registers_library():
    assert _ext.with_cuda() in (True, False)
    # The evilbench namespace exists once _C is imported.
    assert hasattr(torch.ops, "evilbench")


def test_cpu_kernels_run_on_several_threads():
    # at::parallel_for compiles to one thread unless the extension is built with OpenMP; every CPU
    # kernel (Newton–Schulz, spectral) spreads its matrices with it.
    import pytest

    import evilbench._C as C

    if not torch.backends.openmp.is_available():
        pytest.skip("torch without OpenMP: at::parallel_for uses torch's own pool, no build flag involved")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert C._parallel_threads_used(16) == 2
        torch.set_num_threads(1)
        assert C._parallel_threads_used(16) == 1
    finally:
        torch.set_num_threads(old)
