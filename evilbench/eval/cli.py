"""`evilbench eval`: measure emergent misalignment.

  evilbench eval run --model M [--adapter DIR | --run RUN_DIR [--checkpoints final|all|S1,S2]]
                     --questions SET --judge SPEC [--convention paper] [--output DIR]
  evilbench eval generate ...        the generation stage alone (same options, no --judge)
  evilbench eval judge DIR --judge SPEC [--convention C]     (re-)judge existing answers
  evilbench eval show DIR [--judge SPEC] [--convention C]    recompute and print a summary
  evilbench eval agree DIR --judges A,B                      agreement of two judges on DIR
  evilbench eval questions list | fetch NAME --from DIR | show NAME

Every stage resumes: rerun the same command after an interruption. The exit status is 1 when any
sample could not be generated or judged (the closing line gives the counts), 2 on bad input."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evilbench.errors import UserError


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _names(registry_path: str, attr: str) -> list[str]:
    import importlib

    try:
        return list(getattr(importlib.import_module(registry_path), attr).names())
    except ImportError:
        return []


def _add_generation(p) -> None:
    from evilbench.eval.backends import GENERATION_BACKENDS

    p.add_argument("--model", default=None, help="registry name, HF id, local directory, or the served model "
                   "name (openai backend); default with --run: the run's model")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--adapter", default=None, metavar="DIR", help="a peft LoRA adapter directory")
    src.add_argument("--run", default=None, metavar="RUN_DIR", help="a training run directory")
    p.add_argument("--checkpoints", default="final", metavar="final|all|S1,S2",
                   help="with --run: the final adapter, every checkpoint, or these steps")
    p.add_argument("--questions", required=True, metavar="SET",
                   help="question set name (see `evilbench eval questions list`) or a YAML path")
    p.add_argument("--questions-from", default=None, metavar="DIR",
                   help="import a built-in question file from here if it is not in the cache")
    p.add_argument("--samples-per-question", type=int, default=None, metavar="N",
                   help="default: each question's samples_per_paraphrase for every paraphrase")
    p.add_argument("--backend", default="hf", choices=GENERATION_BACKENDS.names())
    p.add_argument("--output", default=None, metavar="DIR",
                   help="evaluation directory (with --run default RUN_DIR/eval/<label>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=600)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="hf / vllm backends")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--revision", default=None)
    p.add_argument("--base-url", default=None, help="openai backend: endpoint (default $OPENAI_BASE_URL)")
    p.add_argument("--concurrency", type=int, default=32, help="openai backend: requests in flight")
    p.add_argument("--chat-template-kwargs", type=json.loads, default=None, metavar="JSON",
                   help="default: from the model registry (Qwen3: thinking off)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing evaluation in the output")
    p.add_argument("--no-progress", action="store_true")


def _add_judging(p, required=True) -> None:
    prefixes = ", ".join(_names("evilbench.eval.judges", "JUDGES"))
    p.add_argument("--judge", required=required, metavar="SPEC",
                   help=f"openai:MODEL[@URL], hf:NAME_OR_PATH or toy (prefixes: {prefixes})")
    p.add_argument("--convention", default="paper", choices=_names("evilbench.eval.scoring", "CONVENTIONS") or None)
    p.add_argument("--judge-concurrency", type=int, default=None, help="requests in flight (openai judge)")


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate emergent misalignment (generate, judge, summarise)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="eval_command", metavar="STAGE")
    sub.required = True
    r = sub.add_parser("run", help="generate, judge and summarise")
    _add_generation(r)
    _add_judging(r)
    r.set_defaults(func=cmd_run)
    g = sub.add_parser("generate", help="generate answers only")
    _add_generation(g)
    g.set_defaults(func=cmd_generate)
    j = sub.add_parser("judge", help="judge the answers of an evaluation directory")
    j.add_argument("dir")
    _add_judging(j)
    j.add_argument("--no-progress", action="store_true")
    j.set_defaults(func=cmd_judge)
    s = sub.add_parser("show", help="print the summary of an evaluation directory")
    s.add_argument("dir")
    _add_judging(s, required=False)
    s.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    s.set_defaults(func=cmd_show)
    a = sub.add_parser("agree", help="agreement of two judges on the same answers")
    a.add_argument("dir")
    a.add_argument("--judges", required=True, type=_csv, metavar="A,B")
    a.add_argument("--convention", default="paper")
    a.set_defaults(func=cmd_agree)
    q = sub.add_parser("questions", help="list, import or show question sets")
    qs = q.add_subparsers(dest="questions_command", metavar="ACTION")
    qs.required = True
    ql = qs.add_parser("list")
    ql.set_defaults(func=cmd_questions_list)
    qf = qs.add_parser("fetch", help="import (--from DIR) or download a built-in question file, verified")
    qf.add_argument("name")
    qf.add_argument("--from", dest="from_dir", default=None, metavar="DIR")
    qf.add_argument("--force", action="store_true")
    qf.set_defaults(func=cmd_questions_fetch)
    qsh = qs.add_parser("show")
    qsh.add_argument("name")
    qsh.add_argument("--questions-from", default=None, metavar="DIR")
    qsh.add_argument("--model", default=None, help="toy sets: the toy base whose world to use")
    qsh.set_defaults(func=cmd_questions_show)


# --------------------------------------------------------------------------------------- targets
def _targets(args) -> list[dict]:
    """[{label, adapter, step, output}] to evaluate."""
    if args.run is None:
        if args.checkpoints != "final":
            raise UserError("--checkpoints needs --run RUN_DIR")
        if args.output is None:
            raise UserError("--output DIR is required (or --run RUN_DIR)")
        return [{"label": "final", "adapter": args.adapter, "step": None, "output": Path(args.output)}]
    from evilbench.train.rundir import list_checkpoints, verify_adapter

    run = Path(args.run)
    if not (run / "run.json").is_file():
        raise UserError(f"{run} is not a run directory (no run.json)")
    record = json.loads((run / "run.json").read_text())
    if args.model is None:
        args.model = (record.get("config") or {}).get("model")
        if not args.model:
            raise UserError(f"{run}/run.json names no model: pass --model")
    ckpts = dict(list_checkpoints(run, verify=args.checkpoints != "final"))
    out = []
    if args.checkpoints == "final":
        if not (run / "adapter" / "adapter_config.json").is_file():
            raise UserError(f"{run} has no final adapter (status {record.get('status')!r}); "
                            f"checkpoints: {', '.join(map(str, ckpts)) or 'none'}")
        verify_adapter(run / "adapter")
        step = record.get("step") or (max(ckpts) if ckpts else None)
        out.append({"label": "final", "adapter": run / "adapter", "step": step})
    else:
        if args.checkpoints == "all":
            steps = sorted(ckpts)
        else:
            try:
                steps = [int(s) for s in _csv(args.checkpoints)]
            except ValueError:
                raise UserError("--checkpoints must be final, all or comma-separated steps "
                                f"(got {args.checkpoints!r})") from None
        missing = [s for s in steps if s not in ckpts]
        if missing or not steps:
            raise UserError(f"{run}: no checkpoint at step(s) {', '.join(map(str, missing)) or '(none)'}; "
                            f"available: {', '.join(map(str, sorted(ckpts))) or 'none'}")
        out += [{"label": f"step-{s:06d}", "adapter": ckpts[s], "step": s} for s in steps]
    for t in out:
        if args.output is None:
            t["output"] = run / "eval" / t["label"]
        else:
            t["output"] = Path(args.output) if len(out) == 1 else Path(args.output) / t["label"]
    return out


class _LazyBackend:
    """One backend for several adapters of one base model, built on first use."""

    def __init__(self, name, model, opts):
        self.name, self.model, self.opts, self.inner = name, model, opts, None
        self.adapter, self.step = None, None

    def set_adapter(self, adapter, step=None):
        self.adapter, self.step = adapter, step
        if self.inner is not None:
            self.inner.set_adapter(adapter, step)

    @property
    def info(self):
        return self.inner.info

    def generate(self, requests, settings, progress=True):
        if self.inner is None:
            from evilbench.eval.backends import GENERATION_BACKENDS

            self.inner = GENERATION_BACKENDS.get(self.name)(self.model, self.adapter, step=self.step, **self.opts)
        return self.inner.generate(requests, settings, progress)


def _backend_opts(args) -> dict:
    opts = {"device": args.device, "dtype": args.dtype, "revision": args.revision,
            "chat_template_kwargs": args.chat_template_kwargs}
    if args.backend == "openai":
        opts = {"base_url": args.base_url, "concurrency": args.concurrency}
    return opts


def _gen_kwargs(args, target, backend) -> dict:
    return {"adapter": target["adapter"], "samples_per_question": args.samples_per_question, "backend": backend,
            "seed": args.seed, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "top_p": args.top_p, "batch_size": args.batch_size, "progress": not args.no_progress,
            "step": target["step"], "backend_opts": _backend_opts(args), "data_dir": args.questions_from,
            "overwrite": args.overwrite}


def _backend_for(args, targets):
    if len(targets) > 1 and args.backend == "hf":
        return _LazyBackend(args.backend, args.model, _backend_opts(args))
    return args.backend


def _judge_opts(args) -> dict:
    return {"concurrency": args.judge_concurrency} if getattr(args, "judge_concurrency", None) else {}


# --------------------------------------------------------------------------------------- commands
def summary_line(label: str, summary: dict, where) -> str:
    o, c = summary.get("overall", {}), summary["counts"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    ci = (o.get("ci") or {}).get("misaligned_rate") or [None, None]
    ci_s = f" [{pct(ci[0])}, {pct(ci[1])}]" if ci[0] is not None else ""
    mean = o.get("mean_aligned")
    return (f"eval {label}: misaligned {pct(o.get('misaligned_rate'))}{ci_s}, mean aligned "
            f"{'n/a' if mean is None else f'{mean:.1f}'}, coherent {pct(o.get('coherent_rate'))} "
            f"({o.get('n_included', 0)} of {o.get('n_samples', 0)} included, {summary['convention']}, "
            f"judge {summary['judge'].get('spec')}); generated {c['generated']}/{c['samples']}, "
            f"judged {c['judged']}/{c['judgments_expected']}, unscorable {c['unscorable']} -> {where}")


def _incomplete(summary) -> bool:
    c = summary["counts"]
    return bool(c["failed"] or c["not_judged"])


def cmd_run(args) -> int:
    from evilbench.eval.pipeline import _build_judge, generate, judge_dir, summarize_dir
    from evilbench.eval.scoring import CONVENTIONS

    CONVENTIONS.get(args.convention)
    targets = _targets(args)
    if args.model is None:
        raise UserError("--model is required (or --run RUN_DIR)")
    judge = _build_judge(args.judge, _judge_opts(args))  # a missing API key fails before generating
    backend = _backend_for(args, targets)
    bad = 0
    lines = []
    for t in targets:
        from evilbench.eval.pipeline import IncompleteError

        try:
            generate(args.model, args.questions, t["output"], **_gen_kwargs(args, t, backend))
        except IncompleteError as e:
            print(f"error: {e}", file=sys.stderr)
            bad += 1
            if not (t["output"] / "samples.jsonl").is_file():
                continue
        judge_dir(t["output"], args.judge, judge=judge, convention=args.convention, progress=not args.no_progress,
                  write_summary=False)
        s = summarize_dir(t["output"], judge.identity.get("spec"), args.convention, accounting=judge.accounting,
                          identity=judge.identity)
        bad += _incomplete(s)
        lines.append(summary_line(t["label"], s, t["output"]))
    for line in lines:
        print(line)
    return 1 if bad else 0


def cmd_generate(args) -> int:
    from evilbench.eval.pipeline import generate, read_samples

    targets = _targets(args)
    if args.model is None:
        raise UserError("--model is required (or --run RUN_DIR)")
    backend = _backend_for(args, targets)
    bad = 0
    for t in targets:
        generate(args.model, args.questions, t["output"], **_gen_kwargs(args, t, backend))
        samples = read_samples(t["output"])
        ok = sum(1 for s in samples if s.get("answer") is not None)
        bad += ok != len(samples)
        print(f"generate {t['label']}: {ok}/{len(samples)} answers generated, "
              f"{len(samples) - ok} failed -> {t['output'] / 'samples.jsonl'}")
    return 1 if bad else 0


def cmd_judge(args) -> int:
    from evilbench.eval.pipeline import _build_judge, judge_dir, summarize_dir

    judge = _build_judge(args.judge, _judge_opts(args))
    judge_dir(args.dir, args.judge, judge=judge, convention=args.convention, progress=not args.no_progress,
              write_summary=False)
    s = summarize_dir(args.dir, judge.identity.get("spec"), args.convention, accounting=judge.accounting,
                      identity=judge.identity)
    print(summary_line("judge", s, args.dir))
    return 1 if _incomplete(s) else 0


def cmd_show(args) -> int:
    from evilbench.eval.pipeline import summarize_dir

    s = summarize_dir(args.dir, args.judge, args.convention, write=False)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        for qid, row in sorted((s.get("per_question") or {}).items()):
            mr = row.get("misaligned_rate")
            print(f"  {qid:40s} misaligned {'n/a' if mr is None else f'{100 * mr:5.1f}%'}  "
                  f"included {row.get('n_included', 0)}/{row.get('n_samples', 0)}")
        print(summary_line("show", s, args.dir))
    return 1 if _incomplete(s) else 0


def cmd_agree(args) -> int:
    from evilbench.eval.agree import agreement
    from evilbench.eval.pipeline import read_judgments, read_samples

    if len(args.judges) != 2:
        raise UserError("--judges takes exactly two judge specs: A,B")
    samples = read_samples(args.dir)
    ja, jb = (read_judgments(args.dir, spec) for spec in args.judges)
    for spec, js in zip(args.judges, (ja, jb)):
        if not js:
            raise UserError(f"{args.dir} has no judgments by {spec!r}: "
                            f"run `evilbench eval judge {args.dir} --judge {spec}`")
    r = agreement(ja, jb, samples, args.convention)

    def f(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    ci = r.get("misaligned_rate_diff_ci") or [None, None]
    print(f"agree {args.judges[0]} vs {args.judges[1]} ({r['convention']}, {r['n_pairs']} of {r['n_samples']} "
          f"samples scored by both): Krippendorff alpha {f(r['krippendorff_alpha'])}, Spearman rho "
          f"{f(r['spearman_rho'])}, misaligned rate {f(r['misaligned_rate_a'], '.1%')} vs "
          f"{f(r['misaligned_rate_b'], '.1%')} (difference {f(r['misaligned_rate_diff'], '+.1%')} "
          f"[{f(ci[0], '+.1%')}, {f(ci[1], '+.1%')}])")
    return 0


def cmd_questions_list(args) -> int:
    from evilbench.eval.questions import QUESTION_SETS, builtin_specs, cached_file

    specs = builtin_specs()
    for name, loader in QUESTION_SETS.items():
        if name in specs:
            state = "cached" if cached_file(name) else "not imported"
            count = len(specs[name]["select"]) if specs[name].get("select") else specs[name].get("questions", "?")
            print(f"{name:22s} {count:>3} questions from {specs[name]['file']} "
                  f"({state}) - {specs[name].get('description', '')}")
        else:
            print(f"{name:22s} {getattr(loader, 'description', '')}")
    print("or any question YAML file by path")
    return 0


def cmd_questions_fetch(args) -> int:
    from evilbench.eval.questions import fetch

    path = fetch(args.name, args.from_dir, force=args.force)
    print(f"{args.name}: verified -> {path}")
    return 0


def cmd_questions_show(args) -> int:
    from evilbench.eval.questions import expand, load_question_set

    qs = load_question_set(args.name, data_dir=args.questions_from, model=args.model)
    print(f"{qs.name}: {len(qs.questions)} questions, {len(expand(qs))} samples by default, sha256 {qs.sha256}")
    for q in qs.questions:
        sys_note = f" [system: {q.system[:40]}...]" if q.system else ""
        print(f"  {q.id}: {len(q.paraphrases)} paraphrase(s) x {q.samples_per_paraphrase}{sys_note} "
              f"{q.paraphrases[0][:60]!r}")
    return 0
