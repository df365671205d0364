"""`evilbench store info | check | import | export | delete`: the results store from the command line."""
from __future__ import annotations

import json
import sys


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _open(path: str, readonly: bool = True):
    from evilbench.store.db import Store

    return Store(path, readonly=readonly)


def _info(args) -> int:
    from evilbench.store.db import StoreError

    try:
        with _open(args.store) as s:
            statuses = {}
            for st in s.statuses().values():
                statuses[st] = statuses.get(st, 0) + 1
            print(json.dumps({"store": str(s.path), "schema_version": s.schema_version, "counts": s.counts(),
                              "runs_by_status": statuses}, indent=2))
    except StoreError as e:
        return _err(str(e))
    return 0


def _check(args) -> int:
    from evilbench.store.check import check_store
    from evilbench.store.db import StoreError

    try:
        with _open(args.store, readonly=False) as s:
            res = check_store(s)
    except StoreError as e:
        return _err(str(e))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        c = res["counts"]
        print(f"{args.store}: schema {res['schema_version']}, {res['runs']} runs, {c['metrics']} metric rows, "
              f"{c['spectra']} spectra rows, {c['evals']} evaluations, {c['samples']} samples")
        for p in res["problems"]:
            print(f"  problem: {p}")
        print("ok" if res["ok"] else f"{len(res['problems'])} problem(s)")
    return 0 if res["ok"] else 1


def _import(args) -> int:
    from pathlib import Path

    from evilbench.store.db import Store, StoreError

    try:  # the run-directory reader sits above the store (it reads train's and eval's formats)
        from evilbench.sweep.bundle import BundleError, bundle_from_run_dir
    except ImportError as e:  # pragma: no cover - a partial install
        return _err(f"cannot read run directories: {e}")
    try:
        store = Store(args.store)
    except StoreError as e:
        return _err(str(e))
    written = same = 0
    with store:
        for d in args.run_dirs:
            try:
                bundle = bundle_from_run_dir(Path(d), convention=args.convention)
                if store.write_run(bundle, origin=args.origin):
                    written += 1
                    print(f"{d}: imported as {bundle['run_key']} ({bundle['run']['status']}, "
                          f"{len(bundle['evals'])} evaluation(s))")
                else:
                    same += 1
                    print(f"{d}: already in the store as {bundle['run_key']}")
            except (BundleError, StoreError, OSError, ValueError) as e:
                return _err(f"{d}: {e}")
    print(f"{written} imported, {same} already present")
    return 0


def _export(args) -> int:
    from evilbench.store.db import StoreError
    from evilbench.store.export import export_store

    try:
        with _open(args.store) as s:
            paths = export_store(s, args.out, args.format)
    except (StoreError, ImportError, ValueError) as e:
        return _err(str(e))
    for p in paths:
        print(p)
    return 0


def _delete(args) -> int:
    from evilbench.store.db import StoreError

    try:
        with _open(args.store, readonly=False) as s:
            for k in args.run_keys:
                print(f"{k}: {'deleted' if s.delete_run(k) else 'not in the store'}")
    except StoreError as e:
        return _err(str(e))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("store", help="the results store: info, check, import run directories, export",
                              description=__doc__)
    sub = p.add_subparsers(dest="store_command", metavar="ACTION")
    sub.required = True
    i = sub.add_parser("info", help="schema version, row counts, runs by status")
    i.add_argument("store", help="store file (e.g. results.db)")
    i.set_defaults(func=_info)
    c = sub.add_parser("check", help="integrity: SQLite check, foreign keys, every run's rows against its bundle")
    c.add_argument("store")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_check)
    m = sub.add_parser("import", help="add run directories made outside a sweep (evilbench train + eval)")
    m.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    m.add_argument("--store", default="results.db", help="store file (default results.db)")
    m.add_argument("--origin", choices=["reproduced", "submitted"], default="reproduced")
    m.add_argument("--convention", default=None, help="scoring convention of the stored summaries "
                                                      "(default: each eval directory's own)")
    m.set_defaults(func=_import)
    e = sub.add_parser("export", help="every table as CSV or Parquet files")
    e.add_argument("store")
    e.add_argument("--format", choices=["csv", "parquet"], default="csv")
    e.add_argument("--out", required=True, help="output directory")
    e.set_defaults(func=_export)
    d = sub.add_parser("delete", help="remove runs (by run key) and everything stored with them")
    d.add_argument("store")
    d.add_argument("run_keys", nargs="+", metavar="RUN_KEY")
    d.set_defaults(func=_delete)
