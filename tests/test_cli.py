"""The top-level command line: re-execution with the right package, one-line errors, --debug, and the
toy-world demo's exit status when runs fail."""
from __future__ import annotations

import subprocess
import sys

import pytest

import evilbench
from evilbench.cli import main, reexec_args
from evilbench.errors import UserError


def test_reexec_imports_this_package_even_beside_a_folder_named_evilbench(tmp_path):
    # the folder that holds a clone called "evilbench": that folder has no __init__.py, and
    # `python -m evilbench.cli` run from here imports it as a namespace package (no __version__)
    (tmp_path / "evilbench" / "evilbench").mkdir(parents=True)
    import os

    for safe_path in ("", "1"):  # with and without PYTHONSAFEPATH (no working directory on sys.path)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
        if safe_path:
            env["PYTHONSAFEPATH"] = safe_path
        out = subprocess.run([sys.executable, *reexec_args(["--version"])], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"evilbench {evilbench.__version__}"


def test_main_reexecutes_through_reexec_args(monkeypatch):
    seen = []

    def fake_reexec(args, python_args):
        seen.append(python_args)
        raise SystemExit(0)  # a real re-exec never returns

    monkeypatch.setattr(sys, "argv", ["evilbench", "toyworld", "datasets", "--out", "x"])
    import evilbench.toyworld.cli as tcli

    monkeypatch.setattr(tcli, "_pin_math", fake_reexec)
    with pytest.raises(SystemExit):
        main()
    assert seen == [reexec_args(["toyworld", "datasets", "--out", "x"])]


def _boom(args):
    raise UserError("something the user can fix\nacross two lines")


def test_expected_errors_are_one_line_and_exit_2_unless_debug(monkeypatch, capsys):
    import evilbench.data.cli as dcli

    monkeypatch.setattr(dcli, "_list", _boom)
    assert main(["data", "list"]) == 2
    err = capsys.readouterr().err
    assert err == "error: something the user can fix across two lines\n"
    for argv in (["--debug", "data", "list"], ["data", "list", "--debug"]):
        with pytest.raises(UserError):
            main(argv)


def test_demo_with_failed_runs_exits_non_zero_and_names_the_failure(monkeypatch, tmp_path, capsys):
    """The demo is `sweep run toy` (which names every failed run and exits 1), then `analyze` and
    `leaderboard render`: a failed sweep makes the demo exit non-zero, after the analysis and the
    leaderboard of what finished."""
    import evilbench.toyworld.demo as demo

    calls = []

    def fake(argv):
        calls.append(argv)
        if argv[0] == "sweep":
            (tmp_path / "results.db").write_bytes(b"")
            return 1
        return 0

    monkeypatch.setattr(demo, "_call", fake)
    monkeypatch.setattr(demo, "_call_together", lambda argvs: [fake(a) for a in argvs])
    assert main(["toyworld", "demo", "--out", str(tmp_path), "--no-plots", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "some runs failed (named above)" in err
    assert [c[:3] for c in calls] == [["sweep", "run", "toy"], ["analyze", str(tmp_path / "results.db"), "--out"],
                                      ["leaderboard", "render", "--store"]]
