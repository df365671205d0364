"""Sweep specifications (YAML): what to train and evaluate, where to store it, how to execute it.

```yaml
name: my-sweep
store: results.db                # the results store (default results.db, relative to the working directory)
workdir: my-sweep-runs           # run directories (default <name>-runs)
models: [qwen3-0.6b]             # registry names, HF ids, directories, or toyworld:base-N
datasets: [insecure]             # registry names, .jsonl paths, or toyworld:DOMAIN-misaligned|aligned
optimizers: [adam, muon]
regularizers: [none, fro_nuclear:1.0]   # none | KIND[:weight] (weight default 1.0)
batch_sizes: [2]
lrs: {adam: [1e-4, 3e-4], muon: [1e-3]}  # a list per optimiser (a grid axis), or a tuning rule:
#  lrs: {rule: min-loss, grid: {adam: [...], muon: [...]}}   lr chosen by task loss / fit only
seeds: [0, 1, 2]
train: {max_steps: 200, grad_accum: 8, lora_r: 32}  # any TrainConfig field by its own name
eval:
  questions: first-plot          # a question-set name or YAML path
  samples: 10                    # samples per question (default: the set's own)
  judge: "openai:gpt-4.1-mini"
  convention: paper
  checkpoints: final             # final | all | [step, ...]
  base: false                    # also evaluate the base model (step 0)
  scores: []                     # auxiliary exact scorers (toyworld-exact)
  backend: hf
  batch_size: 16                 # generation batch (answers are the same whatever the batching)
extra:                           # further sub-grids: each entry overrides axes of the main grid
  - {datasets: [secure], optimizers: [adam], regularizers: [none]}
executor: {kind: local, workers: 2}      # local | ray (address, max_retries) | submitit (cluster, ...)
resources: {num_cpus: 1, num_gpus: 0, timeout_min: 240}
toyworld: {examples: 512, data_seed: 0, world: {...}, arch: {...}, pretrain: {...}}  # toyworld: models
```
Every error names the key at fault and its line in the file."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evilbench.errors import UserError

TOP_KEYS = ("name", "store", "workdir", "models", "datasets", "optimizers", "regularizers", "batch_sizes", "lrs",
            "seeds", "train", "eval", "extra", "executor", "resources", "toyworld", "description", "requires")
AXES = ("models", "datasets", "optimizers", "regularizers", "batch_sizes", "lrs", "seeds")
EVAL_KEYS = ("questions", "samples", "judge", "convention", "checkpoints", "base", "scores", "backend",
             "max_new_tokens", "temperature", "top_p", "seed", "batch_size")
EXECUTORS = ("local", "inline", "ray", "submitit")
EXECUTOR_KEYS = {"local": ("kind", "workers", "threads"), "inline": ("kind", "threads"),
                 "ray": ("kind", "address", "max_retries", "threads", "num_cpus", "num_gpus"),
                 "submitit": ("kind", "cluster", "folder", "partition", "slurm", "max_parallel", "threads")}
RESOURCE_KEYS = ("num_cpus", "num_gpus", "timeout_min", "mem_gb")
# TrainConfig fields a spec sets through its axes or the runner, never under `train:`
RESERVED_TRAIN = ("model", "dataset", "output", "optimizer", "lr", "regularizer", "reg_weight", "batch_size", "seed")


class SpecError(UserError):
    """An invalid sweep specification; the message names the file, line and key."""


@dataclass(frozen=True)
class Regularizer:
    kind: str                 # "none" or a spectral penalty kind
    weight: float = 1.0

    @property
    def label(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.weight:g}"


@dataclass(frozen=True)
class LrSpec:
    per_optimizer: dict | None = None   # optimiser -> [lr, ...]
    rule: str | None = None             # a tuning rule name
    grid: dict | None = None            # optimiser -> [lr, ...] for the rule (None: the rule's default)


@dataclass
class SweepSpec:
    name: str
    store: str
    workdir: str
    grids: list[dict]                   # the main grid + extras: {axis: [values]}
    lrs: LrSpec
    train: dict
    eval: dict
    executor: dict
    resources: dict
    toyworld: dict | None = None
    source: str = "<dict>"
    description: str = ""
    raw: dict = field(default_factory=dict)

    @property
    def optimizers(self) -> list[str]:
        out = []
        for g in self.grids:
            out += [o for o in g["optimizers"] if o not in out]
        return out


# ------------------------------------------------------------------------------------ YAML + lines
class _Lines:
    """Line numbers of keys and list items of the parsed YAML document (1-based), by path."""

    def __init__(self, node=None):
        self.map: dict[tuple, int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node, path):
        self.map[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                self.map[path + (k.value,)] = k.start_mark.line + 1
                self._walk(v, path + (k.value,))
                self.map[path + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))

    def line(self, path) -> int | None:
        path = tuple(path)
        while path and path not in self.map:
            path = path[:-1]
        return self.map.get(path)


def load_spec(path: str | Path) -> SweepSpec:
    """Parse and validate a sweep spec file (or a preset name: evilbench/sweep/presets/NAME.yaml)."""
    p = resolve_spec_path(path)
    text = p.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise SpecError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return parse_spec(data, source=str(p), lines=_Lines(node) if node is not None else _Lines())


def preset_dir() -> Path:
    return Path(__file__).with_name("presets")


def resolve_spec_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    preset = preset_dir() / f"{path}.yaml"
    if "/" not in str(path) and preset.is_file():
        return preset
    known = ", ".join(sorted(q.stem for q in preset_dir().glob("*.yaml")))
    raise SpecError(f"{path}: no such sweep spec file or preset (presets: {known})")


def parse_spec(data, source: str = "<dict>", lines: _Lines | None = None) -> SweepSpec:
    lines = lines or _Lines()

    def fail(path, msg):
        line = lines.line(path)
        key = ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in path).replace(".[", "[") or "(top)"
        raise SpecError(f"{source}{f':{line}' if line else ''}: {key}: {msg}")

    if not isinstance(data, dict):
        fail((), "a sweep spec is a mapping (name:, models:, datasets:, ...)")
    for k in data:
        if k not in TOP_KEYS:
            fail((k,), f"unknown key (known: {', '.join(TOP_KEYS)})")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        fail(("name",), "required: a non-empty name without '/'")

    def str_list(path, value, what, allow_int=False):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            fail(path, f"a non-empty list of {what}")
        for i, v in enumerate(value):
            ok = isinstance(v, int) and not isinstance(v, bool) if allow_int else isinstance(v, str) and v.strip()
            if not ok:
                fail(path + (i,), f"expected {what.removesuffix('s')}, got {v!r}")
        if len(set(map(str, value))) != len(value):
            fail(path, "repeats a value")
        return list(value)

    def optimizers(path, value):
        vals = str_list(path, value, "optimiser names")
        from evilbench.optim import OPTIMIZERS

        for i, o in enumerate(vals):
            if o not in OPTIMIZERS:
                fail(path + (i,), f"unknown optimiser {o!r} (known: {', '.join(OPTIMIZERS)})")
        return vals

    def regularizers(path, value):
        vals = str_list(path, value, "regularizers (none | KIND[:weight])")
        out = []
        for i, v in enumerate(vals):
            kind, _, w = v.partition(":")
            kind = kind.strip()
            if kind == "none":
                if w:
                    fail(path + (i,), "'none' takes no weight")
                out.append(Regularizer("none", 1.0))
                continue
            from evilbench.kernels.spectral import KINDS

            if kind not in KINDS:
                fail(path + (i,), f"unknown regulariser kind {kind!r} (known: none, {', '.join(KINDS)})")
            try:
                weight = float(w) if w else 1.0
            except ValueError:
                fail(path + (i,), f"weight {w!r} is not a number")
            if not (math.isfinite(weight) and weight > 0):
                fail(path + (i,), f"weight must be a finite number > 0 (got {w})")
            out.append(Regularizer(kind, weight))
        return out

    def positive_ints(path, value, what):
        vals = str_list(path, value, what, allow_int=True)
        for i, v in enumerate(vals):
            if v < (0 if what == "seeds" else 1):
                fail(path + (i,), f"must be >= {0 if what == 'seeds' else 1}")
        return vals

    def lr_lists(path, value, opts):
        if not isinstance(value, dict) or not value:
            fail(path, "a mapping optimiser -> list of learning rates")
        out = {}
        for o, lst in value.items():
            if opts is not None and o not in opts:
                fail(path + (o,), f"optimiser {o!r} is not in the sweep's optimizers")
            if isinstance(lst, (int, float)) and not isinstance(lst, bool):
                lst = [lst]
            if not isinstance(lst, list) or not lst:
                fail(path + (o,), "a non-empty list of learning rates")
            vals = []
            for i, x in enumerate(lst):
                if isinstance(x, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
                    try:
                        x = float(x)
                    except ValueError:
                        pass
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
                    fail(path + (o, i), f"a learning rate is a finite number > 0 (got {x!r})")
                vals.append(float(x))
            if len(set(vals)) != len(vals):
                fail(path + (o,), "repeats a learning rate")
            out[o] = vals
        return out

    for k in ("models", "datasets", "optimizers", "seeds"):
        if k not in data:
            fail((k,), "required")
    main = {"models": str_list(("models",), data["models"], "model names"),
            "datasets": str_list(("datasets",), data["datasets"], "dataset names"),
            "optimizers": optimizers(("optimizers",), data["optimizers"]),
            "regularizers": regularizers(("regularizers",), data.get("regularizers", ["none"])),
            "batch_sizes": positive_ints(("batch_sizes",), data.get("batch_sizes", [2]), "batch sizes"),
            "seeds": positive_ints(("seeds",), data["seeds"], "seeds")}
    grids = [main]
    extra = data.get("extra", [])
    if not isinstance(extra, list):
        fail(("extra",), "a list of sub-grids (mappings overriding axes of the main grid)")
    for i, e in enumerate(extra):
        if not isinstance(e, dict) or not e:
            fail(("extra", i), "a mapping overriding axes (models, datasets, optimizers, regularizers, ...)")
        g = dict(main)
        for k, v in e.items():
            p = ("extra", i, k)
            if k == "models":
                g[k] = str_list(p, v, "model names")
            elif k == "datasets":
                g[k] = str_list(p, v, "dataset names")
            elif k == "optimizers":
                g[k] = optimizers(p, v)
            elif k == "regularizers":
                g[k] = regularizers(p, v)
            elif k == "batch_sizes":
                g[k] = positive_ints(p, v, "batch sizes")
            elif k == "seeds":
                g[k] = positive_ints(p, v, "seeds")
            else:
                fail(p, "unknown axis (models, datasets, optimizers, regularizers, batch_sizes, seeds)")
        grids.append(g)
    all_opts = {o for g in grids for o in g["optimizers"]}

    lrs = data.get("lrs")
    if lrs is None:
        fail(("lrs",), "required: a list of learning rates per optimiser, or {rule: NAME}")
    if isinstance(lrs, dict) and "rule" in lrs:
        for k in lrs:
            if k not in ("rule", "grid"):
                fail(("lrs", k), "unknown key of a tuning rule (rule, grid)")
        from evilbench.sweep.tuning import TUNING_RULES

        if lrs["rule"] not in TUNING_RULES.names():
            fail(("lrs", "rule"), f"unknown tuning rule {lrs['rule']!r} (known: {', '.join(TUNING_RULES.names())})")
        grid = lr_lists(("lrs", "grid"), lrs["grid"], all_opts) if "grid" in lrs else None
        rule = TUNING_RULES.get(lrs["rule"])
        for o in sorted(all_opts):
            if (grid is None or o not in grid) and o not in rule.grids:
                fail(("lrs", "grid"), f"the rule {lrs['rule']!r} has no lr grid for {o!r}: give one under lrs.grid")
        lr_spec = LrSpec(rule=lrs["rule"], grid=grid)
    else:
        per = lr_lists(("lrs",), lrs, all_opts)
        for o in sorted(all_opts - set(per)):
            fail(("lrs",), f"no learning rates for optimiser {o!r}")
        lr_spec = LrSpec(per_optimizer=per)

    train = data.get("train", {}) or {}
    if not isinstance(train, dict):
        fail(("train",), "a mapping of training-config fields")
    from evilbench.train.config import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    for k in train:
        if k in RESERVED_TRAIN:
            fail(("train", k), "set by the sweep's axes (models, datasets, optimizers, lrs, regularizers, "
                               "batch_sizes, seeds), not under train")
        if k not in fields:
            fail(("train", k), "not a training-config field (see `evilbench train --help`)")
    try:
        probe = TrainConfig(model="m", dataset="d", output="o", **train)
        probe.validate()
    except (TypeError, ValueError) as e:
        fail(("train",), str(e))

    ev = data.get("eval", {}) or {}
    if not isinstance(ev, dict):
        fail(("eval",), "a mapping (questions, samples, judge, convention, checkpoints, ...)")
    for k in ev:
        if k not in EVAL_KEYS:
            fail(("eval", k), f"unknown key (known: {', '.join(EVAL_KEYS)})")
    ev = {"questions": None, "samples": None, "judge": None, "convention": "paper", "checkpoints": "final",
          "base": False, "scores": [], "backend": "hf", "max_new_tokens": 600, "temperature": 1.0, "top_p": 1.0,
          "seed": 0, "batch_size": 16, **ev}
    if (ev["questions"] is None) != (ev["judge"] is None):
        fail(("eval",), "questions and judge go together (both, or neither for no sampled evaluation)")
    ck = ev["checkpoints"]
    if not (ck in ("final", "all") or (isinstance(ck, list) and all(isinstance(s, int) and s >= 1 for s in ck))):
        fail(("eval", "checkpoints"), "final, all, or a list of steps >= 1")
    if ev["samples"] is not None and (not isinstance(ev["samples"], int) or ev["samples"] < 1):
        fail(("eval", "samples"), "an integer >= 1")
    if not isinstance(ev["base"], bool):
        fail(("eval", "base"), "true or false")
    if isinstance(ev["scores"], str):
        ev["scores"] = [ev["scores"]]
    from evilbench.sweep.evaluation import SCORERS

    for i, s in enumerate(ev["scores"]):
        if s not in SCORERS.names():
            fail(("eval", "scores", i), f"unknown scorer {s!r} (known: {', '.join(SCORERS.names())})")

    ex = data.get("executor", {"kind": "local"})
    if isinstance(ex, str):
        ex = {"kind": ex}
    if not isinstance(ex, dict) or ex.get("kind", "local") not in EXECUTORS:
        fail(("executor", "kind"), f"one of {', '.join(EXECUTORS)}")
    ex = {"kind": "local", **ex}
    for k in ex:
        if k not in EXECUTOR_KEYS[ex["kind"]]:
            known = ", ".join(EXECUTOR_KEYS[ex["kind"]])
            fail(("executor", k), f"unknown key for a {ex['kind']} executor (known: {known})")
    for k in ("workers", "threads", "max_retries", "max_parallel"):
        if k in ex and (not isinstance(ex[k], int) or ex[k] < (0 if k == "max_retries" else 1)):
            fail(("executor", k), "a positive integer")
    res = data.get("resources", {}) or {}
    if not isinstance(res, dict):
        fail(("resources",), "a mapping (num_cpus, num_gpus, timeout_min, mem_gb)")
    for k, v in res.items():
        if k not in RESOURCE_KEYS:
            fail(("resources", k), f"unknown key (known: {', '.join(RESOURCE_KEYS)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            fail(("resources", k), "a number >= 0")
    res = {"num_cpus": 1, "num_gpus": 0, "timeout_min": 240, **res}

    tw = data.get("toyworld")
    if tw is not None:
        from evilbench.sweep.resources import check_toyworld

        msg = check_toyworld(tw)
        if msg:
            fail(("toyworld",) + tuple(msg[0]), msg[1])
    store = data.get("store", "results.db")
    workdir = data.get("workdir", f"{name}-runs")
    for k, v in (("store", store), ("workdir", workdir)):
        if not isinstance(v, str) or not v.strip():
            fail((k,), "a path")
    return SweepSpec(name=name, store=store, workdir=workdir, grids=grids, lrs=lr_spec, train=dict(train), eval=ev,
                     executor=ex, resources=res, toyworld=tw, source=source,
                     description=str(data.get("description", "")), raw=data)
