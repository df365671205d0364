"""`evilbench data list | fetch NAME [--data-dir DIR] | check FILE`."""
from __future__ import annotations

import json


def _sha256_of(name: str, spec) -> str:
    """The registry's expected sha256, else the one verified when the file was fetched, else "-"."""
    if spec.sha256:
        return spec.sha256
    from evilbench.data.registry import cached_path

    path = cached_path(name)
    if path is not None:
        try:
            return json.loads((path.parent / "meta.json").read_text()).get("sha256") or "-"
        except (OSError, ValueError):
            pass
    return "-"


def _list(args) -> int:
    from evilbench.data.registry import cached_path, registry

    width = 64 if args.full else 12
    print(f"{'name':<16} {'kind':<10} {'rows':>6}  {'sha256':<{width}}  {'cached':<6} {'download':<8} licence")
    for name, s in registry().items():
        cached = "yes" if cached_path(name) else "no"
        dl = "yes" if s.redistributable and s.url else "no"
        sha = _sha256_of(name, s)[:width]
        print(f"{name:<16} {s.kind:<10} {s.rows or '?':>6}  {sha:<{width}}  {cached:<6} {dl:<8} {s.license}")
    return 0


def _fetch(args) -> int:
    from evilbench.data.registry import fetch

    print(fetch(args.name, args.data_dir, force=args.force))
    return 0


def _check(args) -> int:
    from evilbench.data.chat import load_chat_jsonl

    examples = load_chat_jsonl(args.file)
    turns = sum(sum(m["role"] == "assistant" for m in ex.messages) for ex in examples)
    print(f"{args.file}: {len(examples)} conversations, {turns} assistant turns: OK")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="EM datasets: list, fetch (download or import + verify), check",
                              description=__doc__)
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("list", help="the dataset registry: rows, sha256, what is cached, licence")
    q.add_argument("--full", action="store_true", help="show whole sha256 digests")
    q.set_defaults(func=_list)
    q = sub.add_parser("fetch", help="download (redistributable) or import (--data-dir) a dataset into the cache, "
                                     "verified")
    q.add_argument("name", help="registry name (see `evilbench data list`)")
    q.add_argument("--data-dir", "--from", dest="data_dir", metavar="DIR",
                   help="import from this local directory (or file) instead of downloading")
    q.add_argument("--force", action="store_true", help="fetch again even if cached")
    q.set_defaults(func=_fetch)
    q = sub.add_parser("check", help="validate a chat JSONL file (errors name file:line)")
    q.add_argument("file", help="chat JSONL file")
    q.set_defaults(func=_check)
