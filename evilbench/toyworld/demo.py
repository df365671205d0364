"""`evilbench toyworld demo`: the toy world's emergent-misalignment demo, which is the `toy` sweep preset
run through the general machinery — a thin alias for

    evilbench sweep run toy --store OUT/results.db --workdir OUT
    evilbench analyze OUT/results.db --out OUT
    evilbench leaderboard render --store OUT/results.db --out OUT/leaderboard

The preset (evilbench/sweep/presets/toy.yaml) is the demo's grid: 4 bases x 2 seeds x {sgd, adam, lion,
muon} x {none, fro_nuclear} on the misaligned narrow set, plus an aligned-control Adam run per base x
seed, each optimiser at the lr the toy world's rule picks (evilbench.toyworld.lr_rule); every
checkpoint is evaluated through evilbench.eval (`toy` questions, `toy` judge) and by the exact judge.
The sweep stores every run; the analysis writes table.md, CSV tables and plots into OUT; the leaderboard
prints the optimiser x regulariser ranking and writes its page to OUT/leaderboard/index.html.

The toy world keeps the world, its bases, datasets, exact judge and lr rule; it imports nothing from
the sweep, store, analysis or leaderboard: this alias starts the commands as child processes of this one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _evilbench_argv(args: list[str]) -> list[str]:
    """`evilbench ARGS` as a command line for a child process, with this process's evilbench package
    first on its path (not `python -m`, which would let a folder named evilbench in the working
    directory shadow the package)."""
    import evilbench

    root = str(Path(evilbench.__file__).resolve().parent.parent)
    boot = f"import sys; sys.path[0] = {root!r}; from evilbench.cli import main; sys.exit(main())"
    return [sys.executable, "-c", boot, *args]


def demo_commands(out: str | Path, spec: str = "toy", jobs: int | None = None, plots: bool = True,
                  progress: bool = True, native_math: bool = False) -> list[list[str]]:
    out = Path(out)
    run = ["sweep", "run", spec, "--store", str(out / "results.db"), "--workdir", str(out)]
    if jobs:
        run += ["--workers", str(jobs)]
    if not progress:
        run.append("--no-progress")
    if native_math:
        run.append("--native-math")
    ana = ["analyze", str(out / "results.db"), "--out", str(out)] + (["--no-plots"] if not plots else [])
    board = ["leaderboard", "render", "--store", str(out / "results.db"), "--out", str(out / "leaderboard")]
    return [run, ana, board]


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when this process dies (even by SIGKILL),
    so killing the demo never leaves its sweep (and, in turn, the sweep's workers) running. Linux only."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _call(argv: list[str]) -> int:
    return subprocess.call(_evilbench_argv(argv), preexec_fn=_die_with_parent)


def _call_together(argvs: list[list[str]]) -> list[int]:
    """Run independent commands at the same time (the analysis and the leaderboard both only read
    the store: on 2 cores this saves the shorter one's time); their output is printed afterwards, one
    command after the other, in the order given."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="evilbench-demo-") as tmp:
        procs = []
        for i, argv in enumerate(argvs):
            out = open(Path(tmp) / f"{i}.out", "w+b")
            procs.append((subprocess.Popen(_evilbench_argv(argv), stdout=out, stderr=subprocess.STDOUT,
                                           preexec_fn=_die_with_parent), out))
        codes = []
        for proc, out in procs:
            codes.append(proc.wait())
            out.seek(0)
            sys.stdout.flush()
            sys.stdout.buffer.write(out.read())
            sys.stdout.flush()
            out.close()
    return codes


def run_demo(out: str | Path = "toyworld-demo", spec: str = "toy", jobs: int | None = None, plots: bool = True,
             progress: bool = True, native_math: bool = False, log=print) -> int:
    """Run (or resume) the demo sweep, then analyse its store; returns the exit status (non-zero when a
    run failed or the analysis could not run)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    run, ana, board = demo_commands(out, spec, jobs, plots, progress, native_math)
    rc = _call(run)
    if not (Path(out) / "results.db").is_file():
        return rc or 1
    rc_ana, rc_board = _call_together([ana, board])
    if rc:
        log(f"error: {rc} from `evilbench {' '.join(run)}`: some runs failed (named above); the tables cover the "
            "finished ones", file=sys.stderr)
    return rc or rc_ana or rc_board
