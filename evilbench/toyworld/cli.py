"""`evilbench toyworld demo | base | datasets | judge`: the toy EM world from the command line."""
from __future__ import annotations

import json


def _demo(args) -> int:
    from evilbench.toyworld.demo import run_demo

    spec = args.spec or ("toy-quick" if args.quick else "toy")
    return run_demo(args.out, spec=spec, jobs=args.jobs, plots=not args.no_plots, progress=not args.no_progress,
                    native_math=args.native_math)


def _one_thread() -> None:
    """The toy models are tiny: intra-op threads never pay off, and on a busy machine OpenMP's spinning
    makes 2 threads up to 100x slower than 1 (measured: 30 LoRA steps 0.7 s vs 82 s)."""
    import torch

    torch.set_num_threads(1)


def _base(args) -> int:
    from dataclasses import replace

    _one_thread()
    from evilbench.toyworld.base import BaseSpec, PretrainConfig, ensure_base, read_meta

    pretrain = PretrainConfig() if args.steps is None else replace(PretrainConfig(), steps=args.steps)
    for seed in args.seed:
        path = ensure_base(BaseSpec(pretrain=pretrain, seed=seed), args.cache, force=args.force)
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

    d = sub.add_parser("demo", help="the toy sweep (bases x seeds x optimisers x regularisers), then its "
                                    "analysis: table, spectra, plots",
                       description="An alias for `evilbench sweep run toy --store OUT/results.db --workdir OUT` "
                                   "then `evilbench analyze OUT/results.db --out OUT`. Rerun to resume. Bases and "
                                   "datasets are cached under $EVILBENCH_CACHE/toyworld.")
    d.add_argument("--out", default="toyworld-demo", help="output directory: store, runs, tables, plots; rerun to "
                                                         "resume (default toyworld-demo)")
    d.add_argument("--jobs", type=int, default=None, help="parallel worker processes (default: CPU cores)")
    d.add_argument("--quick", action="store_true", help="the toy-quick preset: 1 base, 1 seed (smoke test)")
    d.add_argument("--spec", default=None, help="another sweep spec or preset instead of toy")
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
