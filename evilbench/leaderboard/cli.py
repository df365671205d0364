"""`evilbench leaderboard show|render|ingest` and `evilbench submission create|validate`.

  evilbench leaderboard show   [--store DB | --sweep SPEC] [--convention C] [--metric M] [--plain]
  evilbench leaderboard render [--store DB | --sweep SPEC] --out DIR
  evilbench leaderboard ingest FILE --store DB
  evilbench submission create  --store DB (--run-key K ... | --sweep SPEC) --out FILE
  evilbench submission validate FILE [--store DB]"""
from __future__ import annotations

import argparse
import sys

DEFAULT_STORE = "results.db"


def _common(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--store", default=None, metavar="DB", help=f"results store (SQLite; default {DEFAULT_STORE})")
    g.add_argument("--sweep", default=None, metavar="SPEC", help="the store of this sweep spec or preset (e.g. toy)")
    p.add_argument("--convention", default="paper", help="scoring convention (paper, betley, model-organisms)")
    p.add_argument("--metric", default="misaligned_rate", choices=["misaligned_rate", "mean_aligned"],
                   help="what the rank is by")
    p.add_argument("--question-set", default=None, metavar="NAME|SHA256",
                   help="default: the question set with the most samples")
    p.add_argument("--judge", default=None, metavar="MODEL", help="default: the judge with the most samples")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--include-controls", action="store_true",
                   help="rank runs on control datasets too (default: left out, named in the header)")


def register(subparsers) -> None:
    p = subparsers.add_parser("leaderboard", help="optimiser x regulariser ranking with CIs; page; ingest submissions",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="leaderboard_command", metavar="ACTION")
    sub.required = True
    s = sub.add_parser("show", help="print the leaderboard")
    _common(s)
    s.add_argument("--plain", action="store_true", help="plain text (default: rich on a terminal)")
    s.add_argument("--json", action="store_true", help="the rows as JSON")
    s.set_defaults(func=show)
    r = sub.add_parser("render", help="write the static HTML page (+ plots, JSON, CSV) to DIR")
    _common(r)
    r.add_argument("--out", required=True, metavar="DIR")
    r.set_defaults(func=render)
    i = sub.add_parser("ingest", help="validate a submission file and add its runs (origin 'submitted')")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--store", default=DEFAULT_STORE, metavar="DB")
    i.set_defaults(func=ingest)


def register_submission(subparsers) -> None:
    p = subparsers.add_parser("submission", help="create or validate a leaderboard submission file",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="submission_command", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("create", help="write the runs of a store as a submission JSON")
    c.add_argument("--store", default=DEFAULT_STORE, metavar="DB")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--run-key", action="append", metavar="K", help="a run key (repeatable)")
    g.add_argument("--sweep", metavar="SPEC", help="every finished run of this sweep spec (its name)")
    c.add_argument("--out", required=True, metavar="FILE")
    c.add_argument("--submitter", default=None, help="your name (optional, shown to the leaderboard maintainers)")
    c.set_defaults(func=create)
    v = sub.add_parser("validate", help="check a submission file (nothing is written)")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--store", default=None, metavar="DB", help="also check it is not already in this store")
    v.set_defaults(func=validate)


def _open_ro(path):
    from pathlib import Path

    from evilbench.errors import UserError
    from evilbench.store import Store, StoreError

    if not Path(path).is_file():
        raise UserError(f"{path}: no such store (run a sweep first, or pass --store)")
    try:
        return Store(path, readonly=True)
    except StoreError as e:
        raise UserError(str(e)) from None


def _store_of(args) -> str:
    if getattr(args, "sweep", None):
        from evilbench.sweep.spec import load_spec

        return load_spec(args.sweep).store
    return args.store or DEFAULT_STORE


def _build(args):
    from evilbench.leaderboard.ranking import Frames, build

    with _open_ro(_store_of(args)) as st:
        frames = Frames.from_store(st)
    return build(frames, convention=args.convention, metric=args.metric, question_set=args.question_set,
                 judge=args.judge, n_boot=args.n_boot, seed=args.seed, include_controls=args.include_controls)


def show(args) -> int:
    from evilbench.leaderboard import render as R

    lb = _build(args)
    if args.json:
        import json

        print(json.dumps(R._jsonable(lb.to_dict()), indent=1, sort_keys=True))
    elif args.plain or not sys.stdout.isatty():
        print(R.format_plain(lb))
    else:
        R.print_rich(lb)
    return 0


def render(args) -> int:
    from evilbench.leaderboard.render import format_plain, render_html

    lb = _build(args)
    page = render_html(lb, args.out)
    print(format_plain(lb))
    print(f"\npage: {page.resolve()}")
    return 0


def ingest(args) -> int:
    from evilbench.leaderboard.submission import ingest as do_ingest

    keys = do_ingest(args.file, args.store)
    for k in keys:
        print(f"ingested {k} (origin: submitted)")
    print(f"{len(keys)} run(s) added to {args.store}")
    return 0


def _sweep_name(spec: str) -> str:
    from pathlib import Path

    import yaml

    from evilbench.errors import UserError

    try:
        from evilbench.sweep.spec import (
            load_spec,  # the sweep's own loader, when present
        )
    except ImportError:
        load_spec = None
    if load_spec is not None:
        s = load_spec(spec)
        return s["name"] if isinstance(s, dict) else s.name
    p = Path(spec)
    if not p.is_file():
        raise UserError(f"{spec}: no such sweep spec")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict) or not data.get("name"):
        raise UserError(f"{spec}: a sweep spec needs a name")
    return str(data["name"])


def create(args) -> int:
    from evilbench.errors import UserError
    from evilbench.leaderboard import submission as S

    with _open_ro(args.store) as st:
        if args.sweep:
            name = _sweep_name(args.sweep)
            runs = st.runs_frame()
            keys = runs.loc[(runs["sweep"] == name) & (runs["status"] == "finished") & (runs["origin"] == "reproduced"),
                            "run_key"].tolist()
            if not keys:
                raise UserError(f"no finished runs of sweep {name!r} in {args.store}")
        else:
            keys = args.run_key
        obj = S.create(st, keys, submitter={"name": args.submitter} if args.submitter else None)
        S.check_schema(obj)  # what we write must pass our own checks (its runs are in this store, of course)
        S.check_semantics(obj, st, duplicates=False)
    S.dump(obj, args.out)
    for line in S.describe(obj):
        print(line)
    print(f"wrote {args.out} ({len(obj['runs'])} run(s))")
    return 0


def validate(args) -> int:
    from evilbench.leaderboard import submission as S

    if args.store:
        with _open_ro(args.store) as st:
            obj = S.validate(args.file, st)
    else:
        obj = S.validate(args.file)
    for line in S.describe(obj):
        print(line)
    print(f"{args.file}: valid ({len(obj['runs'])} run(s); scores recomputed from raw read-outs, aggregates "
          "recomputed from the samples)")
    return 0
