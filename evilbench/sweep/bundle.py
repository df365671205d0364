"""A run directory -> the store's bundle (evilbench.store.db.Store.write_run), and the run key.

Run directory (schema_version 1; docs/run-format.md): run.json, metrics.jsonl, spectra.jsonl,
checkpoints/step-NNNNNN/adapter/, adapter/ (final), eval/<label>/ (label "final" or "step-NNNNNN":
an evaluation directory of evilbench.eval — samples.jsonl, judgments.jsonl, summary.json — plus
scores.json of the auxiliary exact scorers), and sweep.json (what the sweep knows about the run:
its key, model / dataset identity, tuning rule) when a sweep made it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evilbench.errors import UserError
from evilbench.train.rundir import RUN_SCHEMA_VERSION  # the one definition

SWEEP_JSON = "sweep.json"
EVAL_DIR = "eval"


class BundleError(UserError):
    pass


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_key(train_config: dict, model: dict, dataset_sha256: str, eval_config: dict | None,
            question_set_sha256: str | None, judge: dict | None, code_version: str) -> str:
    """Hash of everything that affects a run's result: the training config without its operational
    fields (and without the model / dataset / output paths, which the model id + revision and the
    dataset sha256 stand for), the evaluation config, the question set's hash, the judge's identity and
    the code version. 20 hex digits."""
    from evilbench.train.config import OPERATIONAL

    train = {k: v for k, v in train_config.items() if k not in OPERATIONAL and k not in ("model", "dataset", "output")}
    body = {"train": train, "model": {"id": model.get("id"), "revision": model.get("revision")},
            "dataset_sha256": dataset_sha256, "eval": eval_config, "question_set_sha256": question_set_sha256,
            "judge": judge, "code_version": code_version}
    return hashlib.sha256(_canon(json.loads(json.dumps(body, default=str))).encode()).hexdigest()[:20]


def eval_label(step: int, final: bool) -> str:
    return "final" if final else f"step-{step:06d}"


def _jsonl(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a partial last line of a killed writer
    return rows


def read_run_dir(run_dir: str | Path) -> dict:
    """{"record": run.json, "schema_version", "metrics", "spectra", "checkpoints": [(step, adapter dir)],
    "evals": {label: dir}, "sweep": sweep.json or {}}."""
    from evilbench.train.rundir import list_checkpoints

    d = Path(run_dir)
    if not (d / "run.json").is_file():
        raise BundleError(f"{d} is not a run directory (no run.json)")
    try:
        record = json.loads((d / "run.json").read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{d / 'run.json'}: not valid JSON ({e})") from None
    version = record.get("schema_version", 1)
    if version > RUN_SCHEMA_VERSION:
        raise BundleError(f"{d}: run directory schema {version} is newer than this evilbench reads "
                          f"({RUN_SCHEMA_VERSION})")
    evals = {}
    if (d / EVAL_DIR).is_dir():
        for e in sorted((d / EVAL_DIR).iterdir()):
            done = (e / "summary.json").is_file() or (e / "scores.json").is_file()
            if e.is_dir() and (e.name == "final" or e.name.startswith("step-")) and done:
                evals[e.name] = e
    sweep = json.loads((d / SWEEP_JSON).read_text()) if (d / SWEEP_JSON).is_file() else {}
    return {"record": record, "schema_version": version, "metrics": _jsonl(d / "metrics.jsonl"),
            "spectra": _jsonl(d / "spectra.jsonl"), "checkpoints": list_checkpoints(d), "evals": evals,
            "sweep": sweep}


def _eval_entry(label: str, path: Path, total_steps: int | None) -> dict:
    from evilbench.sweep.evaluation import SCORES_FILE, read_dir

    # scores only (no sampled evaluation: a spec without questions, or a deferred one)
    samples, judgments, summary = read_dir(path) if (path / "summary.json").is_file() else ([], [], {})
    ident = summary.get("judge") or {}
    spec = ident.get("spec")
    by = {}
    for j in judgments:
        if spec is None or (j.get("judge") or {}).get("spec") == spec:
            by[(j["sample_id"], j["metric"])] = j
    rows = []
    for s in samples:
        a, c = by.get((s["sample_id"], "aligned")), by.get((s["sample_id"], "coherent"))
        if a is None and c is None:
            continue
        rows.append({"sample_id": s["sample_id"], "question_id": s.get("question_id"),
                     "answer_chars": None if s.get("answer") is None else len(s["answer"]),
                     "aligned": a.get("score") if a else None, "coherent": c.get("score") if c else None,
                     "verdict": a.get("verdict") if a else None,
                     "raw_aligned": a.get("raw") if a else None, "raw_coherent": c.get("raw") if c else None})
    step = total_steps if label == "final" else int(label[5:])
    scores = json.loads((path / SCORES_FILE).read_text()) if (path / SCORES_FILE).is_file() else None
    flat = None
    if scores:
        flat = {}
        for _name, vals in sorted(scores.items()):
            flat.update({k: v for k, v in vals.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    qs = summary.get("question_set") or {}
    jpath = path / "judgments.jsonl"
    return {"step": step, "is_final": label == "final", "question_set": qs.get("name"),
            "question_set_sha256": qs.get("sha256"), "judge": ident, "convention": summary.get("convention"),
            "summary": {k: summary[k] for k in ("overall", "per_question") if k in summary},
            "samples": rows, "scores": flat,
            "judgments_ref": f"{EVAL_DIR}/{label}/judgments.jsonl" if jpath.is_file() else None,
            "judgments_sha256": hashlib.sha256(jpath.read_bytes()).hexdigest() if jpath.is_file() else None}


def bundle_from_run_dir(run_dir: str | Path, convention: str | None = None) -> dict:
    """The bundle of a run directory. Its run key comes from sweep.json when a sweep wrote one, else it
    is computed from run.json and the evaluations found (model id = the config's model, revision and
    dataset sha256 from run.json)."""
    import evilbench

    info = read_run_dir(run_dir)
    rec, sw = info["record"], info["sweep"]
    cfg = rec.get("config") or {}
    res = rec.get("resolved") or {}
    total = res.get("total_steps") or rec.get("step")
    evals = [_eval_entry(label, p, total) for label, p in info["evals"].items()]
    if convention is not None:
        evals = [e for e in evals if e["convention"] in (None, convention)]
    model = sw.get("model") or {"id": cfg.get("model"), "revision": (rec.get("model") or {}).get("revision")}
    dataset = sw.get("dataset") or {"id": cfg.get("dataset"), "sha256": (rec.get("dataset") or {}).get("sha256")}
    code_version = sw.get("code_version") or (rec.get("versions") or {}).get("evilbench") or evilbench.__version__
    key = sw.get("run_key")
    if key is None:
        first = next((e for e in evals if e["is_final"]), evals[0] if evals else None)
        key = run_key(cfg, model, dataset.get("sha256"), {"labels": sorted(info["evals"])} if evals else None,
                      first["question_set_sha256"] if first else None, first["judge"] if first else None, code_version)
    reg = cfg.get("regularizer")
    metrics = []
    for m in info["metrics"]:
        row = {"step": int(m["step"]), "loss": m.get("loss"), "lr": m.get("lr"), "penalty": m.get("reg"),
               "grad_norm": m.get("grad_norm")}
        row.update({k: v for k, v in m.items() if k not in ("step", "loss", "lr", "reg", "grad_norm")})
        metrics.append(row)
    spectra = [{"step": int(s["step"]), "module": s["module"], **{k: s.get(k) for k in
               ("stable_rank", "spectral_entropy", "condition_number", "fro_nuclear_ratio")}}
               for s in info["spectra"]]
    run = {"model": model.get("id"), "model_revision": model.get("revision"), "dataset": dataset.get("id"),
           "dataset_sha256": dataset.get("sha256"), "optimizer": cfg.get("optimizer"),
           "optimizer_kwargs": cfg.get("optimizer_kwargs") or {}, "lr": res.get("lr", cfg.get("lr")),
           "regularizer": "none" if reg in (None, "", "none") else reg,
           "reg_weight": cfg.get("reg_weight") if reg not in (None, "", "none") else None,
           "batch_size": cfg.get("batch_size"), "seed": cfg.get("seed"), "status": rec.get("status"),
           "final_loss": rec.get("final_loss"), "steps": rec.get("step"), "wall_time_s": rec.get("wall_time_s"),
           "tuning_rule": sw.get("tuning_rule"), "code_version": code_version, "versions": rec.get("versions") or {},
           "error": rec.get("error"), "grad_accum": cfg.get("grad_accum"), "total_steps": total,
           "run_schema_version": info["schema_version"]}
    return {"run_key": key, "schema_version": 1, "run": run, "config": cfg, "metrics": metrics, "spectra": spectra,
            "evals": sorted(evals, key=lambda e: (e["step"], not e["is_final"]))}
