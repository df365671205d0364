"""Executors: the local pool's workers die with their parent (even under SIGKILL), a dying worker is
reported and replaced; submitit's local executor; Ray on a local instance with fake GPUs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_local_map_results_errors_and_dead_workers():
    from evilbench.sweep.executors import LocalExecutor

    sys.path.insert(0, str(HERE))
    with LocalExecutor(workers=2) as ex:
        out = dict(ex.map("sweep_helpers:square", [{"x": i} for i in range(5)]))
        assert [out[i]["value"] for i in range(5)] == [0, 1, 4, 9, 16]
        assert len({r["pid"] for r in out.values()}) <= 2
        res = dict(ex.map("sweep_helpers:crash", [{"die": False}, {"die": True}, {"die": False}]))
        assert res[0]["error"] == "ValueError: boom" and not res[0]["worker_died"]
        assert res[1]["worker_died"] and "exit code 3" in res[1]["error"]
        assert res[2]["error"] == "ValueError: boom"
        again = dict(ex.map("sweep_helpers:square", [{"x": 3}]))  # a replacement worker took over
        assert again[0]["value"] == 9


_PARENT = r"""
import sys
sys.path.insert(0, sys.argv[2])
from evilbench.sweep.executors import LocalExecutor
with LocalExecutor(workers=2) as ex:
    for _ in ex.map("sweep_helpers:sleepy", [{"seconds": 120, "pidfile": sys.argv[1]}] * 4):
        pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill9_of_the_parent_kills_its_workers(tmp_path):
    pidfile = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), str(HERE)])}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(pidfile), str(HERE)], env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not pidfile.is_file() or len(pidfile.read_text().split()) < 2):
        time.sleep(0.2)
    workers = [int(p) for p in pidfile.read_text().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "workers outlived their killed parent"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill9_of_the_demo_alias_kills_the_sweep(tmp_path, monkeypatch):
    """`evilbench toyworld demo` runs the sweep as a child process: it must die with the demo too."""
    from evilbench.toyworld import demo

    child_code = f"import os, time; open({str(tmp_path / 'child')!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    script = tmp_path / "demo_parent.py"
    script.write_text("import sys\n"
                      f"sys.path.insert(0, {str(HERE.parent.parent)!r})\n"
                      "from evilbench.toyworld import demo\n"
                      f"demo._evilbench_argv = lambda a: [sys.executable, '-c', {child_code!r}]\n"
                      f"demo.run_demo({str(tmp_path / 'out')!r})\n")
    parent = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "child").is_file():
        time.sleep(0.1)
    time.sleep(0.2)
    child = int((tmp_path / "child").read_text())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)
    assert demo.demo_commands("OUT", jobs=2)[0][:3] == ["sweep", "run", "toy"]


def test_submitit_local_executor(tmp_path):
    pytest.importorskip("submitit")
    from evilbench.sweep.executors import SubmititExecutor

    env_pp = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(HERE.parent.parent), env_pp) if p)
    try:
        with SubmititExecutor(folder=str(tmp_path / "logs"), cluster="local", timeout_min=5) as ex:
            out = dict(ex.map("sweep_helpers:square", [{"x": 2}, {"x": 5}]))
            errs = dict(ex.map("sweep_helpers:crash", [{"die": False}]))
    finally:
        os.environ["PYTHONPATH"] = env_pp
    assert out[0]["value"] == 4 and out[1]["value"] == 25
    assert out[0]["pid"] != os.getpid()  # each job ran in its own process
    assert "boom" in errs[0]["error"]
