"""`evilbench data list | fetch NAME [--from DIR] | check FILE`."""
from __future__ import annotations

import sys


def _list(args) -> int:
    from evilbench.data.registry import cached_path, registry

    print(f"{'name':<16} {'kind':<10} {'rows':>6}  {'cached':<6} {'download':<8} licence")
    for name, s in registry().items():
        cached = "yes" if cached_path(name) else "no"
        dl = "yes" if s.redistributable and s.url else "no"
        print(f"{name:<16} {s.kind:<10} {s.rows or '?':>6}  {cached:<6} {dl:<8} {s.license}")
    return 0


def _fetch(args) -> int:
    from evilbench.data.chat import DataError
    from evilbench.data.registry import DatasetError, fetch

    try:
        path = fetch(args.name, args.from_dir, force=args.force)
    except (DatasetError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _check(args) -> int:
    from evilbench.data.chat import DataError, load_chat_jsonl

    try:
        examples = load_chat_jsonl(args.file)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    turns = sum(sum(m["role"] == "assistant" for m in ex.messages) for ex in examples)
    print(f"{args.file}: {len(examples)} conversations, {turns} assistant turns: OK")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="EM datasets: list, fetch (download or import + verify), check",
                              description=__doc__)
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("list", help="show the dataset registry and what is cached")
    q.set_defaults(func=_list)
    q = sub.add_parser("fetch", help="download (redistributable) or import (--from) a dataset into the cache, verified")
    q.add_argument("name")
    q.add_argument("--from", dest="from_dir", metavar="DIR", help="import from this local directory (or file)")
    q.add_argument("--force", action="store_true", help="fetch again even if cached")
    q.set_defaults(func=_fetch)
    q = sub.add_parser("check", help="validate a chat JSONL file (errors name file:line)")
    q.add_argument("file")
    q.set_defaults(func=_check)
