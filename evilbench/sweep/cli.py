"""`evilbench sweep plan | run | status | retry-failed SPEC`: grids of train -> evaluate runs into the
results store. SPEC is a YAML file or a preset name (toy). See docs/sweep.md."""
from __future__ import annotations

import json
import sys


def _runner(args):
    from evilbench.sweep.runner import Runner
    from evilbench.sweep.spec import load_spec

    spec = load_spec(args.spec)
    ex = {"kind": args.executor} if getattr(args, "executor", None) else None
    if ex and args.executor == "ray" and getattr(args, "address", None):
        ex["address"] = args.address
    return Runner(spec, store=args.store, workdir=args.workdir, executor=ex, workers=getattr(args, "workers", None),
                  progress=not getattr(args, "no_progress", False))


def _fmt_cell(j) -> str:
    c = j.cell
    tag = (" [lr-rule candidate]" if j.calibration and not j.grid
           else " [lr-rule candidate, grid]" if j.calibration else "")
    return (f"{j.run_key}  {c['model']:<18} {c['dataset']:<26} {c['optimizer']:<6} lr {c['lr']:<8g} "
            f"{c['regularizer']:<14} bs {c['batch_size']:<3} seed {c['seed']}{tag}")


def _plan(args) -> int:
    r = _runner(args)
    plan = r.plan()
    if args.json:
        print(json.dumps({"jobs": [{"run_key": j.run_key, **j.cell, "calibration": j.calibration, "grid": j.grid}
                                   for j in plan.jobs],
                          "waiting_for_lr_rule": [{**c, "regularizer": c["regularizer"].label}
                                                  for c in plan.pending_rule],
                          "lr_choices": plan.chosen}, indent=1, default=str))
        return 0
    spec = r.spec
    for j in plan.jobs:
        print(_fmt_cell(j))
    for c in plan.pending_rule:
        print(f"{'(lr by rule)':<20}  {c['model']:<18} {c['dataset']:<26} {c['optimizer']:<6} lr {'?':<8} "
              f"{c['regularizer'].label:<14} bs {c['batch_size']:<3} seed {c['seed']}")
    n_cal = sum(1 for j in plan.jobs if j.calibration)
    n_grid = sum(1 for j in plan.jobs if j.grid) + len(plan.pending_rule)
    overlap = sum(1 for j in plan.jobs if j.calibration and j.grid)
    extra = (f"; lr rule {spec.lrs.rule}: {n_cal} candidate runs"
             + (f" ({overlap} of them grid cells)" if overlap else
                f" (the chosen lr's run is reused as its grid cell: "
                f"{n_cal + n_grid - len(spec.optimizers)} runs in all)"
                if plan.pending_rule else "")) if spec.lrs.rule else ""
    print(f"\n{spec.name}: {n_grid} grid runs{extra}; store {r.store_path}, run directories {r.workdir / 'runs'}")
    return 0


def _run(args, retry: bool = False) -> int:
    r = _runner(args)
    summary = r.run(retry_failed=retry)
    c = summary["this_call"]
    chosen = f", {c['evaluated']} chosen lr candidate(s) evaluated" if c.get("evaluated") else ""
    print(f"{summary['spec']}: {summary['finished']}/{summary['jobs']} runs finished "
          f"({c['done']} now, {c['skipped']} already stored{chosen}), {len(summary['failed'])} failed, "
          f"{summary['waiting_for_lr_rule']} waiting for the lr rule; store {summary['store']}")
    for k in summary.get("not_evaluated", []):
        print(f"not evaluated: {k}: a chosen lr candidate whose sampled evaluation failed (rerun to retry)",
              file=sys.stderr)
    if c["resumed"]:
        print(f"resumed {len(c['resumed'])} interrupted run(s) from their last saved state")
    if summary["failed"]:
        from evilbench.store.db import Store

        with Store(summary["store"], readonly=True) as s:
            for k in summary["failed"]:
                print(f"failed: {k}: {(s.get_run(k) or {}).get('error')}", file=sys.stderr)
        return 1
    return 0 if not (summary["missing"] or summary["waiting_for_lr_rule"] or summary.get("not_evaluated")) else 1


def _status(args) -> int:
    r = _runner(args)
    st = r.status()
    counts = {k: len(v) for k, v in st.items() if isinstance(v, list)}
    if args.json:
        print(json.dumps({**counts, "waiting_for_lr_rule": st["waiting_for_lr_rule"],
                          "failed_runs": [j.run_key for j in st["failed"]]}, indent=1))
        return 0
    print(f"{r.spec.name}: done {counts['done']}, failed {counts['failed']}, running {counts['running']}, "
          f"pending {counts['pending']}" + (f", waiting for the lr rule {st['waiting_for_lr_rule']}"
                                            if st["waiting_for_lr_rule"] else ""))
    for opt, ch in st["chosen"].items():
        print(f"  lr rule: {opt:<8} lr {ch['lr']}  ({ch['reason']})")
    if st["failed"]:
        store = r.store(readonly=True)
        for j in st["failed"]:
            print(f"  failed: {_fmt_cell(j)}: {(store.get_run(j.run_key) or {}).get('error')}")
    return 0


def _pin_math(args, python_args: list[str]) -> None:
    """Toy-world sweeps compute on the AVX2 math paths (as `evilbench toyworld`), so their numbers are
    the same on every x86-64 CPU; --native-math opts out."""
    if getattr(args, "native_math", False):
        return
    try:
        from evilbench.sweep.spec import load_spec

        spec = load_spec(args.spec)
    except Exception:  # noqa: BLE001 - the command itself reports a bad spec
        return
    if any(m.startswith("toyworld:") for g in spec.grids for m in g["models"]):
        from evilbench.toyworld.portable_math import reexec_pinned

        reexec_pinned(python_args)


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="grids of runs (train -> evaluate) into the results store",
                              description=__doc__)
    sub = p.add_subparsers(dest="sweep_command", metavar="ACTION")
    sub.required = True

    def common(q, executor=False):
        q.add_argument("spec", metavar="SPEC", help="sweep spec YAML file, or a preset name (toy)")
        q.add_argument("--store", default=None, help="results store (default: the spec's store)")
        q.add_argument("--workdir", default=None, help="run directories (default: the spec's workdir)")
        q.add_argument("--native-math", action="store_true",
                       help="toy-world sweeps: use this CPU's fastest math instead of pinning AVX2")
        q.set_defaults(reexec=_pin_math)
        if executor:
            q.add_argument("--executor", choices=["local", "inline", "ray", "submitit"], default=None,
                           help="override the spec's executor")
            q.add_argument("--address", default=None, help="Ray cluster address (with --executor ray)")
            q.add_argument("--workers", type=int, default=None, help="local executor: worker processes "
                                                                    "(default: the spec's, else one per CPU core)")
            q.add_argument("--no-progress", action="store_true")

    a = sub.add_parser("plan", help="print the expanded grid and its size; runs nothing")
    common(a)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_plan)
    b = sub.add_parser("run", help="run what the store does not have yet (resumes interrupted runs)")
    common(b, executor=True)
    b.set_defaults(func=_run)
    c = sub.add_parser("status", help="done / failed / running / pending")
    common(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_status)
    d = sub.add_parser("retry-failed", help="delete the failed runs' records and run them again from scratch")
    common(d, executor=True)
    d.set_defaults(func=lambda args: _run(args, retry=True))
