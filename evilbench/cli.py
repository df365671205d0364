"""`evilbench` command line: LoRA fine-tuning, evaluation and kernels for the emergent-misalignment
benchmark. Each concept module contributes its subcommand through `register(subparsers)`; modules are
imported lazily enough that `evilbench --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# subcommand -> module providing register(subparsers). Order is the order shown in --help.
COMMANDS = {
    "kernels": "evilbench.kernels.cli",
    "data": "evilbench.data.cli",
    "models": "evilbench.models.cli",
    "train": "evilbench.train.cli",
    "eval": "evilbench.eval.cli",
    "toyworld": "evilbench.toyworld.cli",
    "sweep": "evilbench.sweep.cli",
    "store": "evilbench.store.cli",
    "analyze": "evilbench.analysis.cli",
    "leaderboard": "evilbench.leaderboard.cli",
    "submission": "evilbench.leaderboard.submission_cli",
}

DESCRIPTION = ("evilbench: emergent misalignment under optimiser x regulariser LoRA fine-tuning - datasets, "
               "models, training, evaluation, the toy world and the fused kernels.")


def build_parser() -> argparse.ArgumentParser:
    import evilbench

    parser = argparse.ArgumentParser(prog="evilbench", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"evilbench {evilbench.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def reexec_args(argv: list[str]) -> list[str]:
    """Interpreter arguments that run `evilbench ARGV` again in a fresh process with this process's
    evilbench package. Not `-m evilbench.cli`: that puts the working directory first on sys.path, and
    run from the folder that holds a clone named `evilbench`, the clone's top folder would shadow the
    package (a namespace package without __version__ or anything else)."""
    root = str(Path(__file__).resolve().parents[1])  # the folder holding this evilbench package
    # -c puts "" (the working directory) first on sys.path unless PYTHONSAFEPATH is set: replace it
    boot = (f"import sys; sys.path[:1] = [{root!r}] if sys.path[:1] == [''] else [{root!r}, *sys.path[:1]]; "
            "from evilbench.cli import main; sys.exit(main())")
    return ["-c", boot, *argv]


def _expected_errors() -> tuple[type[BaseException], ...]:
    from evilbench.errors import UserError
    from evilbench.registry import UnknownNameError

    return (UserError, UnknownNameError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError)


def main(argv: list[str] | None = None) -> int:
    real = argv is None  # a real command line (not a test calling main)
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("--")] if "--" in argv else argv
    debug = "--debug" in head  # accepted anywhere on the line, not only before the subcommand
    if debug:
        argv.remove("--debug")
    args = build_parser().parse_args(argv)
    args.debug = debug
    try:
        if real and getattr(args, "reexec", None):
            args.reexec(args, reexec_args(["--debug", *argv] if debug else argv))
        return int(args.func(args) or 0)
    except _expected_errors() as e:
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
