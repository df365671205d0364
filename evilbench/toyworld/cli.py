"""`evilbench toyworld demo | base | datasets | judge`: the toy EM world from the command line."""
from __future__ import annotations

import argparse
import json
import sys


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _lr(s: str) -> tuple[str, float]:
    name, _, value = s.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected OPTIMIZER=LR, got {s!r}") from None


def _demo(args) -> int:
    from dataclasses import replace

    from evilbench.toyworld.demo import DemoConfig, MathMismatch, quick_config, render_table, run_demo

    cfg = quick_config() if args.quick else DemoConfig()
    over = {}
    for name in ("bases", "seeds", "optimizers", "regularizers", "reg_weight", "controls"):
        v = getattr(args, name)
        if v is not None:
            over[name] = v
    if args.lr:
        over["lrs"] = dict(args.lr)
    cfg = replace(cfg, **over)
    if args.controls is None:  # the default control optimiser only where it is part of the grid
        cfg = replace(cfg, controls=tuple(c for c in cfg.controls if c in cfg.optimizers))
    if args.steps is not None:
        cfg = replace(cfg, recipe=replace(cfg.recipe, steps=args.steps))
    try:
        cfg.validate()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        payload = run_demo(cfg, args.out, cache=args.cache, jobs=args.jobs, progress=not args.no_progress,
                           plots=not args.no_plots, recalibrate=args.recalibrate)
    except MathMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(render_table(payload))
    print(f"\nresults: {payload['out_dir']}/results.json, runs.csv, trajectories.csv, table.md"
          + (", plots/*.png" if not args.no_plots else ""))
    failed = [x for x in payload["runs"] if x.get("status") != "finished"]
    if failed:
        print(failure_summary(failed, len(payload["runs"])), file=sys.stderr)
        return 1
    return 0


def failure_summary(failed: list[dict], total: int) -> str:
    """`error: K of N runs did not finish` and, per distinct failure, which runs and why."""
    by_error: dict[str, list[str]] = {}
    for x in failed:
        cell = "/".join(str(x[k]) for k in ("base", "seed", "optimizer", "regularizer", "kind") if k in x)
        by_error.setdefault(f"{x.get('status')}: {x.get('error') or 'no error recorded'}", []).append(cell)
    lines = [f"error: {len(failed)} of {total} run(s) did not finish (the table shows them as -)"]
    for why, cells in by_error.items():
        lines.append(f"  {len(cells)} run(s) {why}  [{', '.join(cells[:4])}{', ...' if len(cells) > 4 else ''}]")
    return "\n".join(lines)


def _one_thread() -> None:
    """The toy models are tiny: intra-op threads never pay off, and on a busy machine OpenMP's spinning
    makes 2 threads up to 100x slower than 1 (measured: 30 LoRA steps 0.7 s vs 82 s)."""
    import torch

    torch.set_num_threads(1)


def _base(args) -> int:
    from dataclasses import replace

    _one_thread()
    from evilbench.toyworld.base import ensure_base, read_meta
    from evilbench.toyworld.demo import DemoConfig

    cfg = DemoConfig()
    if args.steps is not None:
        cfg = replace(cfg, pretrain=replace(cfg.pretrain, steps=args.steps))
    for seed in args.seed:
        path = ensure_base(cfg.base_spec(seed), args.cache, force=args.force)
        meta = read_meta(path)
        ev, log = meta["base_eval"], meta["pretrain_log"]
        print(f"{path}\n  pre-training loss {log['final_loss']:.4f} (ideal {log['ideal_loss']:.4f}, "
              f"{log['wall_time_s']:.0f}s); first-answer misalignment {100 * ev['misalignment']:.1f}%, "
              f"coherence {100 * ev['coherence']:.1f}%")
    return 0


def _datasets(args) -> int:
    from evilbench.toyworld.world import World, WorldConfig

    world = World(WorldConfig(seed=args.world_seed))
    for name, path in world.export_narrow(args.out, n=args.n, seed=args.seed).items():
        print(f"{name:<20} {path}")
    return 0


def _judge(args) -> int:
    import torch

    from evilbench.toyworld.base import world_of
    from evilbench.toyworld.judge import exact_scores, sampled_scores
    from evilbench.toyworld.model import load_fused

    _one_thread()
    model = load_fused(args.model, args.adapter)
    world = world_of(args.model)
    if args.mode == "exact":
        scores = exact_scores(model, world)
    else:
        scores = sampled_scores(model, world, n=args.samples, generator=torch.Generator().manual_seed(args.seed))
    print(json.dumps(scores.summary(args.domain), indent=2))
    return 0


def _pin_math(args, python_args: list[str]) -> None:
    if not args.native_math:
        from evilbench.toyworld.portable_math import reexec_pinned

        reexec_pinned(python_args)


def register(subparsers) -> None:
    p = subparsers.add_parser("toyworld", help="the toy EM world: demo, bases, datasets, exact judge",
                              description=__doc__)
    sub = p.add_subparsers(dest="toyworld_command", metavar="ACTION")
    sub.required = True

    d = sub.add_parser("demo", help="bases x seeds x optimisers x regularisers: table, spectra, plots")
    d.add_argument("--out", default="toyworld-demo", help="output directory; rerun to resume (default toyworld-demo)")
    d.add_argument("--cache", default=None, help="toy-world cache (default: $EVILBENCH_CACHE/toyworld or "
                                                 "~/.cache/evilbench/toyworld)")
    d.add_argument("--bases", type=int, default=None, help="number of base models (default 4)")
    d.add_argument("--seeds", type=int, default=None, help="fine-tune seeds per base (default 2)")
    d.add_argument("--optimizers", type=_csv, default=None, help="default sgd,adam,lion,muon")
    d.add_argument("--regularizers", type=_csv, default=None, help="default none,fro_nuclear")
    d.add_argument("--reg-weight", type=float, default=None, help="spectral penalty weight (default 1.0)")
    d.add_argument("--controls", type=_csv, default=None, help="optimisers with aligned-control runs (default adam)")
    d.add_argument("--lr", type=_lr, action="append", default=[], metavar="OPT=LR",
                   help="fix an optimiser's lr instead of applying the lr rule (repeatable)")
    d.add_argument("--steps", type=int, default=None, help="fine-tuning steps per run (default 80)")
    d.add_argument("--jobs", type=int, default=None, help="parallel worker processes (default: CPU cores)")
    d.add_argument("--quick", action="store_true", help="1 base, 1 seed (smoke test; no meaningful CIs)")
    d.add_argument("--recalibrate", action="store_true", help="rerun the lr-rule sweep even if its result is cached")
    d.add_argument("--no-plots", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_demo)

    b = sub.add_parser("base", help="pre-train (or find in the cache) toy-world base models")
    b.add_argument("--seed", type=int, nargs="+", default=[0])
    b.add_argument("--steps", type=int, default=None, help="pre-training steps (default: the demo's)")
    b.add_argument("--cache", default=None)
    b.add_argument("--force", action="store_true", help="pre-train again even if cached")
    b.set_defaults(func=_base)

    s = sub.add_parser("datasets", help="export every domain's narrow datasets (misaligned + aligned) as chat JSONL")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=512, help="conversations per dataset")
    s.add_argument("--seed", type=int, default=0, help="dataset sampling seed")
    s.add_argument("--world-seed", type=int, default=0)
    s.set_defaults(func=_datasets)

    j = sub.add_parser("judge", help="score a toy-world model (optionally + LoRA adapter) with the exact judge")
    j.add_argument("--model", required=True, help="toy-world base model directory")
    j.add_argument("--adapter", default=None, help="peft LoRA adapter directory (e.g. RUN/adapter)")
    j.add_argument("--domain", default=None, help="fine-tune domain: adds in-domain / held-out numbers")
    j.add_argument("--mode", choices=["exact", "sampled"], default="exact")
    j.add_argument("--samples", type=int, default=32, help="samples per question (sampled mode)")
    j.add_argument("--seed", type=int, default=0)
    j.set_defaults(func=_judge)

    for action in (d, b, s, j):
        action.add_argument("--native-math", action="store_true",
                            help="use this CPU's fastest math paths instead of pinning ATen and MKL to AVX2; "
                                 "numbers then differ between machines (also EVILBENCH_NATIVE_MATH=1)")
        action.set_defaults(reexec=_pin_math)
