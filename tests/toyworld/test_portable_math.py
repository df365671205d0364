"""The toy-world commands pin ATen and MKL to their AVX2 code paths, so their numbers are the same on
every x86-64 CPU with AVX2 (see evilbench/toyworld/portable_math.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from evilbench.toyworld import portable_math as pm

PROBE = ("import json, os, torch; "
         "print(json.dumps([torch.backends.cpu.get_cpu_capability(), os.environ.get('MKL_CBWR')]))")
needs_avx2 = pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                                reason="this CPU has no AVX2 path to pin to")


def _run(code: str, **env) -> list:
    base = {k: v for k, v in os.environ.items() if k not in (*pm.PINNED, pm.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_avx2
def test_reexec_runs_torch_on_the_avx2_path():
    code = (f"from evilbench.toyworld.portable_math import reexec_pinned; reexec_pinned(['-c', {PROBE!r}]); "
            "print('[null, null]')")
    assert _run(code) == ["AVX2", "AVX2"]  # the re-executed process printed this, not the original
    assert _run(code, EVILBENCH_NATIVE_MATH="1") == [None, None]  # opted out: no re-exec, original prints


def test_math_tag_and_pinned_check(monkeypatch):
    for k, v in pm.PINNED.items():
        monkeypatch.setenv(k, v)
    assert pm.is_pinned()
    monkeypatch.delenv("MKL_CBWR")
    assert not pm.is_pinned()
    assert pm.math_tag() == f"native-{torch.backends.cpu.get_cpu_capability().lower()}"


def test_cli_commands_carry_the_pin_and_the_opt_out():
    from evilbench.cli import build_parser

    for cmd in (["toyworld", "demo"], ["toyworld", "base"], ["toyworld", "datasets", "--out", "x"],
                ["toyworld", "judge", "--model", "m"]):
        args = build_parser().parse_args(cmd)
        assert args.reexec is not None and args.native_math is False
        assert build_parser().parse_args(cmd + ["--native-math"]).native_math is True


def test_another_code_path_is_another_base(monkeypatch):
    """The demo's store never mixes code paths: the math path is part of a base's identity (its cache key,
    hence the model revision in every run key), so runs on another path are other runs, not resumptions."""
    from evilbench.toyworld.base import BaseSpec

    for k, v in pm.PINNED.items():
        monkeypatch.setenv(k, v)
    pinned = BaseSpec().key()
    monkeypatch.delenv("MKL_CBWR")
    native = BaseSpec().key()
    assert pinned != native and pinned.endswith("-s0") and native.endswith("-s0")
