"""The extension builds, loads, registers its operators for the devices it was built for, and
reports how it was built."""
import pytest
import torch

from evilbench.kernels import _ext

OPS = ("newton_schulz", "muon_update_", "spectral_grams", "spectral_forward", "spectral_backward",
       "spectral_singular_values")


def _has_kernel(op: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"evilbench::{op}", key)
    except RuntimeError:  # "operator evilbench::op does not exist": the schema was never registered
        return False


def test_extension_registers_every_operator_on_cpu():
    _ext.load()
    missing = [op for op in OPS if not _has_kernel(op, "CPU")]
    assert not missing, f"no CPU kernel registered for {missing}"
    # the Python wrappers reach the registered op (torch.ops makes namespaces on demand, ops it does not)
    assert isinstance(torch.ops.evilbench.newton_schulz.default, torch._ops.OpOverload)


def test_with_cuda_says_whether_the_cuda_kernels_are_registered():
    built = _ext.with_cuda()
    assert isinstance(built, bool)
    assert _has_kernel("newton_schulz", "CUDA") == built
    if torch.cuda.is_available() and torch.version.cuda and not built:
        pytest.skip("a CUDA machine with a CPU-only build of the extension")


def test_cpu_kernels_run_on_several_threads():
    # at::parallel_for compiles to one thread unless the extension is built with OpenMP; every CPU
    # kernel (Newton–Schulz, spectral) spreads its matrices with it.
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
