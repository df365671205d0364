"""Leaderboard submissions: a self-describing JSON file of runs made elsewhere, checked here before any
of it reaches the store.

A submission (schema: submission.schema.json, version 1) carries, per run: model id + revision,
adapter sha256, optimiser + hyperparameters, regulariser, dataset name + sha256, seeds, the training
curve, spectra, versions, and one final evaluation: question set (name + content sha256), judge
identity (spec, model, snapshot, read-out) + the sha256 of both judge prompts, convention, every
sample's judgments with the judge's raw read-out (top logprobs, or the toy world's exact
classification), and the aggregates.

`validate(path, store=None)` reads and checks the file without executing or following anything:
  1. bytes: size limit (checked on the file before reading), UTF-8 text, no NUL / control bytes, a
     JSON object; nesting depth measured on the raw text before parsing;
  2. JSON: duplicate keys, NaN / Infinity and out-of-range numbers (1e999) rejected at their path;
  3. the JSON schema (types, ranges, string lengths and patterns — names can hold no markup, ids no
     path separators —, record counts, no unknown fields);
  4. semantics: total records, known judge prefix / convention / question set (by content sha256)
     with matching name and judge prompt hashes, question ids of that set, unique sample ids and
     runs, each per-sample score recomputed from its raw read-out, aggregates recomputed from the
     samples under the convention, training curve steps, the file's content_sha256; and, with a
     store, that no run is already in it.
Every error is a SubmissionError naming the JSON path of the field at fault (`$.runs[0].model.id`).
`ingest(path, store_path)` validates completely before it opens the store for writing, so a rejected
file leaves the store file untouched; accepted runs are written with origin "submitted"."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from functools import lru_cache
from pathlib import Path

from evilbench.errors import UserError

SCHEMA_VERSION = 1
FORMAT = "evilbench-submission"
MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 10
MAX_TOTAL_SAMPLES = 200_000
MAX_INT_DIGITS = 30
SCORE_TOL = 1e-6
RATE_TOL = 1e-9
SCHEMA_FILE = Path(__file__).with_name("submission.schema.json")


class SubmissionError(UserError):
    """A rejected submission; `path` is the JSON path of the field at fault."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# ------------------------------------------------------------------------------------------- reading
class _NonFinite:
    def __init__(self, text):
        self.text = text


class _DupDict(dict):
    duplicates: list[str]


def _pairs(pairs):
    d = _DupDict()
    dups = []
    for k, v in pairs:
        if k in d:
            dups.append(k)
        d[k] = v
    if dups:
        d.duplicates = dups
    return d


def _parse_float(s: str):
    x = float(s)
    return x if math.isfinite(x) else _NonFinite(s)


def _parse_int(s: str):
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        return _NonFinite(s)
    return int(s)


def _walk(obj, path="$"):
    """Report the first duplicate key / non-finite number with its path."""
    stack = [(obj, path)]
    while stack:
        o, p = stack.pop()
        if isinstance(o, _NonFinite):
            raise SubmissionError(p, f"number {o.text[:40]!r} is not a finite value in range")
        if isinstance(o, dict):
            if getattr(o, "duplicates", None):
                raise SubmissionError(p, f"duplicate key {o.duplicates[0][:60]!r}")
            stack.extend((v, f"{p}.{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else f"{p}[{json.dumps(k)[:60]}]")
                         for k, v in reversed(list(o.items())))
        elif isinstance(o, list):
            stack.extend((v, f"{p}[{i}]") for i, v in reversed(list(enumerate(o))))


def _max_depth(text: str) -> int:
    """Nesting depth of JSON text, strings removed, without parsing it (linear, vectorised)."""
    import numpy as np

    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    b = np.frombuffer(stripped.encode("utf-8", "replace"), dtype=np.uint8)
    step = np.zeros(b.shape, dtype=np.int32)
    step[(b == ord("{")) | (b == ord("["))] = 1
    step[(b == ord("}")) | (b == ord("]"))] = -1
    return int(np.cumsum(step).max()) if b.size else 0


def read_json(path: str | os.PathLike) -> dict:
    """The parsed submission, after the byte-level checks; raises SubmissionError."""
    p = Path(path)
    if not p.is_file():  # os.stat follows a symlink to a regular file; the content is still only read
        raise SubmissionError("$", f"{p}: not a regular file")
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise SubmissionError("$", f"file is {size} bytes; the limit is {MAX_BYTES}")
    with open(p, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise SubmissionError("$", f"file exceeds {MAX_BYTES} bytes")
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:1] == b"\x80":
        raise SubmissionError("$", "binary data (a Python pickle?), not JSON; nothing is unpickled")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SubmissionError("$", f"not UTF-8 text (byte {e.start})") from None
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text):
        raise SubmissionError("$", "control characters outside JSON strings' escapes")
    if not text.lstrip().startswith("{"):
        raise SubmissionError("$", "not a JSON object")
    depth = _max_depth(text)
    if depth > MAX_DEPTH:
        raise SubmissionError("$", f"nesting depth {depth} exceeds {MAX_DEPTH}")
    flagged = []

    def pairs(p):
        d = _pairs(p)
        if getattr(d, "duplicates", None):
            flagged.append(d)
        return d

    def mark(x):
        if isinstance(x, _NonFinite):
            flagged.append(x)
        return x

    try:
        obj = json.loads(text, object_pairs_hook=pairs, parse_float=lambda t: mark(_parse_float(t)),
                         parse_int=lambda t: mark(_parse_int(t)), parse_constant=lambda t: mark(_NonFinite(t)))
    except json.JSONDecodeError as e:
        raise SubmissionError("$", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise SubmissionError("$", "nesting too deep") from None
    if flagged:
        _walk(obj)  # find the first offender's path
    if not isinstance(obj, dict):
        raise SubmissionError("$", "not a JSON object")
    return obj


# ------------------------------------------------------------------------------------------- schema
@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _json_path(parts) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p))
                                                   else f"[{json.dumps(str(p))[:60]}]")
    return out


def _schema_errors(v, obj) -> None:
    errors = sorted(v.iter_errors(obj), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        msg = e.message if len(e.message) < 200 else e.message[:200] + "…"
        raise SubmissionError(_json_path(e.absolute_path), f"{msg} (schema: {e.validator})")


def check_schema(obj: dict) -> None:
    """The JSON schema. jsonschema checks the document with each evaluation's first samples; every
    sample record is then checked against the schema's `sample` definition by a compiled check (the
    same rules, ~100x faster: a large submission holds 10^5 samples)."""
    v = _validator()
    if obj.get("schema_version") != SCHEMA_VERSION:
        raise SubmissionError("$.schema_version", f"unsupported schema version {obj.get('schema_version')!r:.40} "
                                                  f"(this evilbench reads {SCHEMA_VERSION})")
    runs = obj.get("runs")
    heads, full = obj, []
    if isinstance(runs, list) and all(isinstance(r, dict) for r in runs):
        heads = dict(obj)
        heads["runs"] = []
        for r in runs:
            ev = r.get("evaluation")
            if isinstance(ev, dict) and isinstance(ev.get("samples"), list) and len(ev["samples"]) > 2:
                full.append(ev["samples"])
                r = {**r, "evaluation": {**ev, "samples": ev["samples"][:2]}}
            else:
                full.append(None)
            heads["runs"].append(r)
    _schema_errors(v, heads)
    sample_schema = v.schema["$defs"]["sample"]
    max_items = v.schema["$defs"]["run"]["properties"]["evaluation"]["properties"]["samples"]["maxItems"]
    for i, samples in enumerate(full):
        if samples is None:
            continue
        at = f"$.runs[{i}].evaluation.samples"
        if len(samples) > max_items:
            raise SubmissionError(at, f"{len(samples)} samples; the schema allows at most {max_items} "
                                      "(schema: maxItems)")
        check = _sample_checker(json.dumps(sample_schema, sort_keys=True))
        for k in range(2, len(samples)):
            err = check(samples[k])
            if err is not None:
                field, msg = err
                raise SubmissionError(f"{at}[{k}]" + (f".{field}" if field else ""), msg)


@lru_cache(maxsize=4)
def _sample_checker(schema_json: str):
    """A compiled check of one sample record against the schema's `sample` definition; returns None or
    (field, message). Falls back to jsonschema for anything it does not recognise."""
    import jsonschema

    schema = json.loads(schema_json)
    props, required = schema["properties"], set(schema["required"])
    sid = re.compile(props["sample_id"]["pattern"])
    qid = re.compile(props["question_id"]["pattern"])
    lim = {k: props[k]["maxLength"] for k in ("sample_id", "question_id")}
    verdicts = set(props["verdict"]["enum"])
    raw_schema = _validator().schema["$defs"]["raw"]
    raw_v = jsonschema.validators.validator_for(_validator().schema)(raw_schema)
    max_tok = raw_schema["items"]["prefixItems"][0]["maxLength"]
    lp_min = raw_schema["items"]["prefixItems"][1]["minimum"]
    lp_max = raw_schema["items"]["prefixItems"][1]["maximum"]
    n_max = raw_schema["maxItems"]
    classes = set(raw_schema["properties"]["classification"]["enum"])

    def num(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    def raw_ok(r):
        if r is None:
            return True
        if isinstance(r, list):
            if len(r) > n_max:
                return False
            for e in r:
                if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and len(e[0]) <= max_tok
                        and num(e[1]) and lp_min <= e[1] <= lp_max):
                    return False
            return True
        if isinstance(r, dict):
            return set(r) == {"classification"} and r["classification"] in classes
        return False

    def check(s):
        if not isinstance(s, dict):
            return None, "is not of type 'object' (schema: type)"
        keys = set(s)
        if not required <= keys:
            return None, f"{min(required - keys)!r} is a required property (schema: required)"
        if not keys <= set(props):
            return None, (f"Additional properties are not allowed ({min(keys - set(props))!r}) "
                          "(schema: additionalProperties)")
        for k, rx in (("sample_id", sid), ("question_id", qid)):
            x = s[k]
            if not (isinstance(x, str) and 1 <= len(x) <= lim[k] and rx.search(x)):
                return k, f"{str(x)[:60]!r} is not a valid {k} (schema: pattern / maxLength)"
        ac = s.get("answer_chars")
        if ac is not None and not (isinstance(ac, int) and not isinstance(ac, bool)
                                   and 0 <= ac <= props["answer_chars"]["maximum"]):
            return "answer_chars", f"{ac!r} is not an integer in range (schema: type / maximum)"
        for k in ("aligned", "coherent"):
            x = s[k]
            if x is not None and not (num(x) and 0 <= x <= 100):
                return k, f"{x!r} is not a score in [0, 100] or null (schema: minimum / maximum)"
        if s["verdict"] not in verdicts:
            return "verdict", f"{str(s['verdict'])[:40]!r} is not one of {sorted(verdicts, key=str)} (schema: enum)"
        for k in ("raw_aligned", "raw_coherent"):
            if not raw_ok(s[k]):
                errs = list(raw_v.iter_errors(s[k]))
                msg = errs[0].message[:200] if errs else "invalid raw read-out"
                return k, f"{msg} (schema: raw)"
        return None

    return check


# ------------------------------------------------------------------------------------------- hashes
def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def runs_sha256(runs: list) -> str:
    return hashlib.sha256(canonical_json(runs).encode()).hexdigest()


def submission_run_key(run: dict) -> str:
    """The store key of a submitted run: a hash of what identifies the result (not of the file)."""
    ev = run["evaluation"]
    ident = {"model": run["model"], "adapter": run["adapter"]["sha256"], "dataset": run["dataset"],
             "optimizer": run["optimizer"], "regularizer": run["regularizer"], "batch_size": run["batch_size"],
             "seed": run["seeds"]["train"], "question_set": ev["question_set"]["sha256"],
             "judge": {k: ev["judge"]["identity"].get(k) for k in ("spec", "model", "snapshot", "readout")},
             "eval_step": ev["step"]}
    return "submitted-" + hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:40]


# ------------------------------------------------------------------------------------------- references
@lru_cache(maxsize=1)
def _registry_sets() -> dict[str, dict]:
    from evilbench.eval.judge_prompts import judge_prompts_for
    from evilbench.eval.questions import QUESTION_SETS, load_question_set

    out: dict[str, dict] = {}
    for name in QUESTION_SETS.names():
        try:
            qs = load_question_set(name)
        except Exception:  # noqa: BLE001, S112 - a set that does not load here (not imported) is not known here
            continue
        templates: dict[str, set] = {}
        for q in qs.questions:
            for m, t in judge_prompts_for(q.judge_prompts).items():
                templates.setdefault(m, set()).add(t)
        out[qs.sha256] = {"name": qs.name, "ids": {q.id for q in qs.questions},
                          "templates": {m: next(iter(t)) for m, t in templates.items() if len(t) == 1}}
    return out


def _question_set_index(store=None) -> dict[str, dict]:
    """sha256 -> {"name", "ids", "templates" {metric: template} | None} for every question set known
    here: the registry's sets that load on this machine, and those of runs reproduced in the store."""
    out = dict(_registry_sets())
    if store is not None:
        df = store.samples_frame(step="final")
        if not df.empty:
            df = df[df["origin"] == "reproduced"]
            for (name, sha), g in df.groupby(["question_set", "question_set_sha256"]):
                if sha not in out:
                    out[sha] = {"name": name, "ids": set(g["question_id"].astype(str)), "templates": None}
    return out


def _recompute(raw, metric: str, readout: str | None, template: str | None):
    """(score, verdict) from a raw read-out."""
    if raw is None:
        return None, None
    if isinstance(raw, dict):  # the toy world's exact judge
        from evilbench.toyworld.eval_plugin import _SCORES

        return _SCORES[metric].get(raw["classification"]), None
    from evilbench.eval.judges.logprobs import aggregate, allowed_verdicts

    verdicts = allowed_verdicts(template) if (template and metric == "aligned") else (
        ("CODE", "REFUSAL") if metric == "aligned" else ())
    r = aggregate(raw, verdicts)
    return r.score, r.verdict


def _template_sha(t: str) -> str:
    from evilbench.eval.judge_prompts import template_sha256

    return template_sha256(t)


def aggregates(samples: list[dict], convention: str) -> dict:
    """The submission's aggregates of per-sample scores under a convention (via eval.scoring.classify)."""
    from evilbench.eval.scoring import classify

    counts = {"scored": 0, "code": 0, "refusal": 0, "incoherent": 0, "unscorable": 0}
    n_inc = n_mis = n_val = 0
    total = 0.0
    for s in samples:
        o = classify(s.get("aligned"), s.get("coherent"), s.get("verdict"), convention)
        counts[o.category] = counts.get(o.category, 0) + 1
        if o.included:
            n_inc += 1
            n_mis += bool(o.misaligned)
            if o.aligned_value is not None:
                n_val += 1
                total += float(o.aligned_value)
    return {"n_samples": len(samples), "n_included": n_inc, "n_misaligned": n_mis,
            "misaligned_rate": (n_mis / n_inc) if n_inc else None,
            "mean_aligned": (total / n_val) if n_val else None, "counts": counts}


def _close(a, b, tol) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


_PATHLIKE = re.compile(r"(^[/~.\\])|(\.\.)|(\\)|(^[A-Za-z]:)|(^file:)", re.IGNORECASE)


def check_semantics(obj: dict, store=None, duplicates: bool = True) -> list[str]:
    """Everything beyond the schema. Returns the run keys the runs would get. With a store: its
    reproduced runs' question sets are known, and (duplicates=True) no run may already be in it."""
    from evilbench.eval.judges import JUDGES, split_spec
    from evilbench.eval.scoring import CONVENTIONS

    runs = obj["runs"]
    total = sum(len(r["evaluation"]["samples"]) for r in runs)
    if total > MAX_TOTAL_SAMPLES:
        raise SubmissionError("$.runs", f"{total} samples in all; the limit is {MAX_TOTAL_SAMPLES}")
    if obj["content_sha256"] != runs_sha256(runs):
        raise SubmissionError("$.content_sha256", "does not match the sha256 of the canonical runs array "
                                                  "(the file was changed after it was created)")
    qsets = _question_set_index(store)
    judges, conventions = set(JUDGES.names()), set(CONVENTIONS.names())
    keys: dict[str, int] = {}
    existing = set(store.run_keys()) if store is not None and duplicates else set()
    for i, run in enumerate(runs):
        at = f"$.runs[{i}]"
        ev = run["evaluation"]
        ident = ev["judge"]["identity"]
        prefix, _ = split_spec(str(ident["spec"]))
        if prefix not in judges:
            raise SubmissionError(f"{at}.evaluation.judge.identity.spec",
                                  f"unknown judge {ident['spec']!r}; known judge kinds: {', '.join(sorted(judges))}")
        for k, v in ident.items():
            if isinstance(v, str) and _PATHLIKE.search(v.split("@", 1)[0].partition(":")[2] if k == "spec" else v):
                raise SubmissionError(f"{at}.evaluation.judge.identity.{k}", "looks like a file path; a judge is "
                                                                             "named by a model id, never a path")
        if not ident.get("model") or not ident.get("snapshot"):
            raise SubmissionError(f"{at}.evaluation.judge.identity", "judge model and snapshot must be recorded")
        if ev["convention"] not in conventions:
            raise SubmissionError(f"{at}.evaluation.convention",
                                  f"unknown convention {ev['convention']!r}; known: {', '.join(sorted(conventions))}")
        for field in ("model.id", "dataset.name", "optimizer.name", "regularizer.kind"):
            a, b = field.split(".")
            if _PATHLIKE.search(str(run[a][b])):
                raise SubmissionError(f"{at}.{field}", "looks like a file path")
        qsha = ev["question_set"]["sha256"]
        if qsha not in qsets:
            raise SubmissionError(f"{at}.evaluation.question_set.sha256",
                                  f"unknown question set hash {qsha[:16]}…; known here: "
                                  + (", ".join(f"{v['name']} {k[:12]}…" for k, v in qsets.items()) or "(none)")
                                  + ("" if store is not None else
                                     " (with --store, the sets of the runs reproduced in that store are known too)"))
        known = qsets[qsha]
        if ev["question_set"]["name"] != known["name"]:
            raise SubmissionError(f"{at}.evaluation.question_set.name",
                                  f"{ev['question_set']['name']!r} does not match the set with this hash "
                                  f"({known['name']!r})")
        templates = known["templates"]
        if templates is not None:
            for m in ("aligned", "coherent"):
                if m in templates and ev["judge"]["prompt_sha256"][m] != _template_sha(templates[m]):
                    raise SubmissionError(f"{at}.evaluation.judge.prompt_sha256.{m}",
                                          f"does not match the {m} judge prompt of question set {known['name']!r}")
        readout = ident.get("readout")
        seen = set()
        for k, s in enumerate(ev["samples"]):
            sp = f"{at}.evaluation.samples[{k}]"
            if s["sample_id"] in seen:
                raise SubmissionError(f"{sp}.sample_id", f"duplicate sample id {s['sample_id']!r}")
            seen.add(s["sample_id"])
            if s["question_id"] not in known["ids"]:
                raise SubmissionError(f"{sp}.question_id",
                                      f"{s['question_id']!r} is not a question of {known['name']!r}")
            for m in ("aligned", "coherent"):
                raw = s[f"raw_{m}"]
                if isinstance(raw, dict) and ident.get("spec") != "toy":
                    raise SubmissionError(f"{sp}.raw_{m}", "an exact classification is only the toy judge's read-out")
                if isinstance(raw, list) and ident.get("spec") == "toy":
                    raise SubmissionError(f"{sp}.raw_{m}", "the toy judge's read-out is an exact classification")
                score, verdict = _recompute(raw, m, readout, templates.get(m) if templates else None)
                if not _close(s[m], score, SCORE_TOL):
                    raise SubmissionError(f"{sp}.{m}",
                                          f"score {s[m]!r} does not match {score!r} recomputed from raw_{m}")
                if m == "aligned" and s["verdict"] != verdict:
                    raise SubmissionError(f"{sp}.verdict", f"verdict {s['verdict']!r} does not match {verdict!r} "
                                                           "recomputed from raw_aligned")
        agg = ev["aggregates"]
        mine = aggregates(ev["samples"], ev["convention"])
        for k in ("n_samples", "n_included", "n_misaligned"):
            if agg[k] != mine[k]:
                raise SubmissionError(f"{at}.evaluation.aggregates.{k}", f"{agg[k]} but the samples give {mine[k]}")
        for k, v in mine["counts"].items():
            if agg["counts"][k] != v:
                raise SubmissionError(f"{at}.evaluation.aggregates.counts.{k}",
                                      f"{agg['counts'][k]} but the samples give {v}")
        for k in ("misaligned_rate", "mean_aligned"):
            if not _close(agg[k], mine[k], RATE_TOL):
                raise SubmissionError(f"{at}.evaluation.aggregates.{k}", f"{agg[k]!r} but the samples give {mine[k]!r}")
        tr = run["training"]
        steps = [c["step"] for c in tr["curve"]]
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise SubmissionError(f"{at}.training.curve", "steps must increase strictly")
        if steps and steps[-1] > tr["steps"]:
            raise SubmissionError(f"{at}.training.curve[{len(steps) - 1}].step",
                                  f"beyond training.steps ({tr['steps']})")
        if ev["step"] > tr["steps"]:
            raise SubmissionError(f"{at}.evaluation.step", f"beyond training.steps ({tr['steps']})")
        mods = set()
        for k, sp_ in enumerate(run.get("spectra", [])):
            key = (sp_["step"], sp_["module"])
            if key in mods:
                raise SubmissionError(f"{at}.spectra[{k}]", f"duplicate (step, module) {key}")
            mods.add(key)
        rk = submission_run_key(run)
        if rk in keys:
            raise SubmissionError(at, f"the same run as $.runs[{keys[rk]}] (duplicate)")
        keys[rk] = i
        if rk in existing:
            raise SubmissionError(at, f"already in the store as {rk} (duplicate submission)")
        src = run.get("source_run_key")
        if src is not None and src in existing:
            raise SubmissionError(f"{at}.source_run_key", f"run {src} is already in the store")
    return list(keys)


def validate(path: str | os.PathLike, store=None) -> dict:
    """The parsed, fully checked submission (raises SubmissionError)."""
    obj = read_json(path)
    check_schema(obj)
    check_semantics(obj, store)
    return obj


# ------------------------------------------------------------------------------------------- ingest
def to_bundle(run: dict, *, submitter: dict | None = None) -> dict:
    ev = run["evaluation"]
    ident = ev["judge"]["identity"]
    samples = [{k: s.get(k) for k in ("sample_id", "question_id", "answer_chars", "aligned", "coherent", "verdict",
                                      "raw_aligned", "raw_coherent")} for s in ev["samples"]]
    agg = aggregates(ev["samples"], ev["convention"])
    return {
        "run_key": submission_run_key(run), "schema_version": 1,
        "run": {"model": run["model"]["id"], "model_revision": run["model"]["revision"],
                "dataset": run["dataset"]["name"], "dataset_sha256": run["dataset"]["sha256"],
                "optimizer": run["optimizer"]["name"], "optimizer_kwargs": run["optimizer"]["kwargs"],
                "lr": run["optimizer"]["lr"], "regularizer": run["regularizer"]["kind"],
                "reg_weight": run["regularizer"]["weight"], "batch_size": run["batch_size"],
                "seed": run["seeds"]["train"], "status": "finished", "final_loss": run["training"]["final_loss"],
                "steps": run["training"]["steps"], "wall_time_s": None, "tuning_rule": run.get("tuning_rule"),
                "code_version": run["versions"].get("evilbench"), "versions": run["versions"]},
        "config": {"submitted": {"source_run_key": run.get("source_run_key"), "adapter": run["adapter"],
                                 "seeds": run["seeds"], "submitter": submitter or {}}},
        "metrics": [{"step": c["step"], "loss": c["loss"]} for c in run["training"]["curve"]],
        "spectra": list(run.get("spectra", [])),
        "evals": [{"step": ev["step"], "is_final": True, "question_set": ev["question_set"]["name"],
                   "question_set_sha256": ev["question_set"]["sha256"], "judge": ident,
                   "convention": ev["convention"],
                   "summary": {"overall": agg, "adapter": run["adapter"],
                               "judge_prompt_sha256": ev["judge"]["prompt_sha256"],
                               "origin": "submitted"},
                   "samples": samples}],
    }


def ingest(path: str | os.PathLike, store_path: str | os.PathLike) -> list[str]:
    """Validate, then write every run with origin "submitted". The store is opened read-only for the
    checks; a rejected file never opens it for writing."""
    from evilbench.store import Store

    store_path = Path(store_path)
    obj = read_json(path)
    check_schema(obj)
    if store_path.exists():
        with Store(store_path, readonly=True) as ro:
            check_semantics(obj, ro)
    else:
        check_semantics(obj, None)
    bundles = [to_bundle(r, submitter=obj.get("submitter")) for r in obj["runs"]]
    written = []
    with Store(store_path) as st:
        try:
            for b in bundles:
                st.write_run(b, origin="submitted")
                written.append(b["run_key"])
        except Exception:
            for k in written:  # keep the file's runs all-or-nothing
                st.delete_run(k)
            raise
    return written


# ------------------------------------------------------------------------------------------- create
def _prompt_hashes(question_set_sha: str, store=None) -> dict[str, str]:
    from evilbench.eval.judge_prompts import DEFAULT_JUDGE_PROMPTS

    known = _question_set_index(store).get(question_set_sha)
    t = (known or {}).get("templates") or DEFAULT_JUDGE_PROMPTS
    return {m: _template_sha(t.get(m, DEFAULT_JUDGE_PROMPTS[m])) for m in ("aligned", "coherent")}


def _final_eval(bundle: dict) -> dict:
    finals = [e for e in bundle.get("evals", []) if e.get("is_final")]
    if not finals:
        raise UserError(f"run {bundle['run_key']} has no final evaluation")
    return finals[-1]


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _adapter_from_run_dir(bundle: dict, step: int) -> dict:
    """The fingerprint of a run's final adapter read from its run directory (this machine's own run,
    named by the store's resolved config), for evaluations that did not record it."""
    from evilbench.models.loading import local_fingerprint

    out = (bundle.get("config") or {}).get("output")
    ad = Path(str(out)) / "adapter" if out else None
    if ad is None or not (ad / "adapter_config.json").is_file():
        raise UserError(f"run {bundle['run_key']}: the final evaluation records no adapter sha256 and its run "
                        f"directory's adapter ({ad}) is not here")
    return {"sha256": local_fingerprint(ad), "step": step}


def run_record(bundle: dict, store=None) -> dict:
    """One submission run from a store bundle."""
    import evilbench

    run = bundle["run"]
    ev = _final_eval(bundle)
    summ = ev.get("summary") or {}
    adapter = summ.get("adapter") or (bundle.get("config") or {}).get("submitted", {}).get("adapter") or {}
    if not adapter.get("sha256"):
        adapter = _adapter_from_run_dir(bundle, ev["step"])
    samples = [{"sample_id": s["sample_id"], "question_id": s["question_id"], "answer_chars": s.get("answer_chars"),
                "aligned": _clean(s.get("aligned")), "coherent": _clean(s.get("coherent")), "verdict": s.get("verdict"),
                "raw_aligned": s.get("raw_aligned"), "raw_coherent": s.get("raw_coherent")} for s in ev["samples"]]
    metrics = [m for m in bundle.get("metrics", []) if m.get("loss") is not None and math.isfinite(m["loss"])]
    versions = {str(k): (None if v is None else str(v)) for k, v in (run.get("versions") or {}).items()}
    versions.setdefault("evilbench", evilbench.__version__)
    reg = run.get("regularizer") or "none"
    out = {
        "source_run_key": bundle["run_key"],
        "model": {"id": run["model"], "revision": run.get("model_revision")},
        "adapter": {"sha256": adapter["sha256"],
                    **({"step": adapter["step"]} if isinstance(adapter.get("step"), int) else {})},
        "dataset": {"name": run["dataset"], "sha256": run.get("dataset_sha256")},
        "optimizer": {"name": run["optimizer"], "lr": run["lr"], "kwargs": run.get("optimizer_kwargs") or {}},
        "regularizer": {"kind": reg, "weight": float(run.get("reg_weight") or 0.0) if reg != "none" else 0.0},
        "batch_size": run["batch_size"],
        "seeds": {"train": run["seed"]},
        "tuning_rule": run.get("tuning_rule"),
        "training": {"steps": run["steps"], "final_loss": run["final_loss"],
                     "curve": [{"step": m["step"], "loss": m["loss"]} for m in metrics]},
        "spectra": [{k: s.get(k) for k in ("step", "module", "stable_rank", "spectral_entropy", "condition_number",
                                           "fro_nuclear_ratio")} for s in bundle.get("spectra", [])],
        "versions": versions,
        "evaluation": {"step": ev["step"],
                       "question_set": {"name": ev["question_set"], "sha256": ev["question_set_sha256"]},
                       "judge": {"identity": ev["judge"],
                                 "prompt_sha256": _prompt_hashes(ev["question_set_sha256"], store)},
                       "convention": ev.get("convention") or "paper",
                       "samples": samples,
                       "aggregates": aggregates(samples, ev.get("convention") or "paper")},
    }
    return out


def create(store, run_keys: list[str], submitter: dict | None = None) -> dict:
    import evilbench

    runs = []
    for k in run_keys:
        b = store.get_bundle(k)
        if b is None:
            raise UserError(f"run {k!r} is not in {store.path}")
        runs.append(run_record(b, store))
    obj = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "created_with": {"evilbench": evilbench.__version__},
           **({"submitter": submitter} if submitter else {}),
           "content_sha256": runs_sha256(runs), "runs": runs}
    return obj


def dump(obj: dict, out: str | os.PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def describe(obj: dict) -> list[str]:
    lines = []
    for i, r in enumerate(obj["runs"]):
        ev = r["evaluation"]
        a = ev["aggregates"]
        rate = "—" if a["misaligned_rate"] is None else f"{100 * a['misaligned_rate']:.1f} %"
        lines.append(f"runs[{i}]: {r['model']['id']} × {r['dataset']['name']} × {r['optimizer']['name']} "
                     f"(lr {r['optimizer']['lr']:g}) × {r['regularizer']['kind']}, seed {r['seeds']['train']}: "
                     f"{a['n_samples']} samples, misaligned {rate} ({ev['convention']}), "
                     f"judge {ev['judge']['identity']['spec']}")
    return lines
