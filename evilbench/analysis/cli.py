"""`evilbench analyze STORE|SPEC --out DIR`: tables (CSV + table.md), analysis.json and PNG plots of a
results store (or of a sweep spec's store)."""
from __future__ import annotations

import sys
from pathlib import Path


def _run(args) -> int:
    from evilbench.analysis.core import Options
    from evilbench.analysis.report import analyze
    from evilbench.errors import UserError
    from evilbench.store.db import Store

    target = Path(args.target).expanduser()
    if args.store:
        path = Path(args.store)
    elif target.suffix in (".db", ".sqlite", ".sqlite3") or (
            target.is_file() and target.read_bytes()[:15] == b"SQLite format 3"):
        path = target
    else:
        from evilbench.sweep.spec import load_spec

        path = Path(load_spec(args.target).store)
    if not path.is_file():
        raise UserError(f"{path}: no such results store")
    opts = Options(question_set=args.question_set, judge=args.judge, convention=args.convention,
                   fit_measure=args.fit_measure, fit_threshold=args.fit_threshold, primary=args.primary,
                   alignment=args.alignment, n_boot=args.n_boot)
    with Store(path, readonly=True) as store:
        res = analyze(store, args.out, opts, plots=not args.no_plots)
    print(res["table"])
    print(f"\ntables: {args.out}/table.md, runs.csv, cells.csv, trajectories.csv, mean_trajectories.csv, "
          "matched_loss.csv, regressions.csv, regularizer_effect.csv, spectra.csv, analysis.json"
          + (f"; plots: {args.out}/plots/*.png" if not args.no_plots else ""), file=sys.stderr)
    unfinished = res["n_runs"] - res["n_finished"]
    if unfinished:
        print(f"warning: {unfinished} run(s) in the store did not finish", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="tables and plots of a results store (regressions, matched loss, "
                                              "trajectories, spectra, regulariser effect)", description=__doc__)
    p.add_argument("target", metavar="STORE|SPEC", help="a results store file, or a sweep spec (its store)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--store", default=None, help="the store, when TARGET is a spec whose store moved")
    p.add_argument("--question-set", default=None, help="evaluations of this question set (default: the most common)")
    p.add_argument("--judge", default=None, help="evaluations of this judge spec (default: the most common)")
    p.add_argument("--convention", default=None,
                   help="evaluations scored with this convention (default: the most common)")
    p.add_argument("--fit-measure", default=None, help="measure whose threshold marks the first fit (default: "
                                                       "scores_in_domain_misalignment if present, else loss-based)")
    p.add_argument("--fit-threshold", type=float, default=0.9)
    p.add_argument("--primary", default=None, help="the EM measure of the tables (default: "
                                                   "scores_held_out_misalignment if present, else misaligned_rate)")
    p.add_argument("--alignment", default="mean_aligned", help="alignment measure of the regressions")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_run)
