"""The extension builds, loads and reports how it was built."""
import torch

from evilbench.kernels import _ext


def test_extension_loads_and_registers_library():
    assert _ext.with_cuda() in (True, False)
    # The evilbench namespace exists once _C is imported.
    assert hasattr(torch.ops, "evilbench")
