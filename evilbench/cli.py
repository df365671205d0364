"""`evilbench` command line. Each concept module contributes its subcommand through
`register(subparsers)`; modules are imported lazily enough that `evilbench --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module providing register(subparsers). Order is the order shown in --help.
COMMANDS = {
    "kernels": "evilbench.kernels.cli",
    "data": "evilbench.data.cli",
    "models": "evilbench.models.cli",
    "train": "evilbench.train.cli",
    "toyworld": "evilbench.toyworld.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evilbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and getattr(args, "reexec", None):  # a real command line (not a test calling main)
        args.reexec(args, ["-m", "evilbench.cli", *sys.argv[1:]])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
