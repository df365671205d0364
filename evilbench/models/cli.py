"""`evilbench models list | show NAME | build-tiny [NAME ...] | import NAME [--gguf FILE]`."""
from __future__ import annotations

import json
import sys


def _fmt_params(x):
    if x is None:
        return "-"
    return f"{x / 1e9:.1f}B" if x >= 1e9 else f"{x / 1e6:.0f}M"


def _list(args) -> int:
    from evilbench.models.registry import registry

    width = max(16, *(len(n) for n in registry()))
    print(f"{'name':<{width}} {'family':<7} {'params':>7} {'active':>7}  {'architecture':<32} {'hf_id / twin'}")
    for name, s in registry().items():
        if s.is_tiny and not args.all:
            continue
        where = s.hf_id or (f"(CPU test model: evilbench models import {s.imported.get('alias') or name})"
                            if s.is_imported else "(tiny twin, built offline)")
        print(f"{name:<{width}} {s.family:<7} {_fmt_params(s.params):>7} {_fmt_params(s.active_params):>7}  "
              f"{s.architecture:<32} {where}{'  twin: ' + s.twin if s.twin else ''}")
    return 0


def _show(args) -> int:
    from dataclasses import asdict

    from evilbench.models.registry import ModelError, get

    try:
        spec = get(args.name)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(spec), indent=2))
    return 0


def _build(args) -> int:
    from evilbench.models.registry import registry
    from evilbench.models.tiny import build_tiny

    names = args.names or [n for n, s in registry().items() if s.is_tiny]
    for n in names:
        print(f"{n}: {build_tiny(n, force=args.force)}")
    return 0


def _import(args) -> int:
    from evilbench.models.importer import import_model, provenance
    from evilbench.models.registry import ModelError

    try:
        out = import_model(args.name, args.gguf, force=args.force, progress=not args.no_progress)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rec = provenance(out) or {}
    src = rec.get("source", {})
    origin = f"{src.get('package')} {src.get('package_version')}" if src.get("package") else src.get("path")
    print(f"{rec.get('name')}: {out}\n  from {src.get('file')} ({origin}), sha256 {src.get('sha256')}, "
          f"licence {rec.get('license')}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="model registry: list, show, build tiny twins, import real weights",
                              description=__doc__)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("list", help="the registry (benchmark models; --all adds tiny twins)")
    q.add_argument("--all", action="store_true")
    q.set_defaults(func=_list)
    q = sub.add_parser("show", help="one registry entry as JSON")
    q.add_argument("name")
    q.set_defaults(func=_show)
    q = sub.add_parser("build-tiny", help="build (or find cached) tiny twins")
    q.add_argument("names", nargs="*")
    q.add_argument("--force", action="store_true", help="rebuild even if cached")
    q.set_defaults(func=_build)
    q = sub.add_parser("import", help="convert a registry entry's GGUF weights (from its package or --gguf) "
                                      "into an HF-format directory in the cache")
    q.add_argument("name", help="registry name or alias of an importable model (e.g. smollm2)")
    q.add_argument("--gguf", metavar="FILE", help="the GGUF file (default: from the entry's installed package); "
                                                  "its sha256 must match the registry's")
    q.add_argument("--force", action="store_true", help="rebuild even if imported")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=_import)
