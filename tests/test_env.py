"""Recorded facts about the process: versions, the one dtype table, and the machine's load with a
warning when it is busy (timings then overstate speed-ups)."""
from __future__ import annotations

import os

import pytest
import torch

from evilbench import _env


def test_dtype_table():
    assert _env.torch_dtype("bf16") is torch.bfloat16 and _env.torch_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        _env.torch_dtype("fp8")
    from evilbench.models.loading import resolve_dtype

    assert resolve_dtype("fp16", "cpu") is torch.float16 and resolve_dtype("auto", "cpu") is torch.float32


def test_versions_name_the_libraries():
    import evilbench

    v = _env.versions()
    assert v["evilbench"] == evilbench.__version__ and v["torch"] == torch.__version__ and v["peft"]


def test_machine_load_and_busy_warning(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.2, 0.3))
    idle = _env.machine_load()
    assert idle == {"loadavg": [0.1, 0.2, 0.3], "cpus": 2, "busy": False} and _env.busy_warning(idle) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (6.5, 5.0, 4.0))
    busy = _env.machine_load()
    assert busy["busy"] and "load average 6.50 on 2 cores" in _env.busy_warning(busy)


def test_kernels_demo_prints_the_load_and_warns_when_busy(monkeypatch, capsys):
    from evilbench import cli

    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 60.0, 50.0))
    assert cli.main(["kernels", "demo", "--layers", "1", "--rounds", "1", "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"load average before: 64.00 60.00 50.00 (1/5/15 min) on {os.cpu_count()} cores" in out
    assert "warning: the machine is busy" in out and "load average after" in out
