"""One sweep job in a worker process: train (or resume, or find finished) the run, evaluate its
checkpoints, and return the run's bundle. The parent writes the bundle to the store: a run's results
reach the store once, in one transaction, whichever executor ran it."""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path


def init_worker(threads: int = 1) -> None:
    """Per-process setup: torch threads, quiet libraries."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(max(1, int(threads)))
    warnings.filterwarnings("ignore")
    logging.getLogger("evilbench.train").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _steps_to_evaluate(ev: dict, ckpts: list[int], total: int) -> list[tuple[int, bool]]:
    """[(step, is_final)]: the final adapter, checkpoints the spec asks for, and step 0 (the base)."""
    sel = ckpts if ev["checkpoints"] == "all" else [] if ev["checkpoints"] == "final" else \
        [s for s in ckpts if s in set(ev["checkpoints"])]
    out = [(0, False)] if ev.get("base") else []
    out += [(s, False) for s in sel if s != total]
    return out + [(total, True)]


def failed_bundle(job: dict, status: str, error: str, record: dict | None = None) -> dict:
    import evilbench

    cfg = job["train"]
    record = record or {}
    return {"run_key": job["run_key"], "schema_version": 1,
            "run": {"model": job["model"]["id"], "model_revision": job["model"].get("revision"),
                    "dataset": job["dataset"]["id"], "dataset_sha256": job["dataset"].get("sha256"),
                    "optimizer": cfg["optimizer"], "optimizer_kwargs": cfg.get("optimizer_kwargs") or {},
                    "lr": cfg.get("lr"), "regularizer": cfg.get("regularizer") or "none",
                    "reg_weight": cfg.get("reg_weight") if cfg.get("regularizer") else None,
                    "batch_size": cfg.get("batch_size"), "seed": cfg.get("seed"), "status": status,
                    "final_loss": record.get("final_loss"), "steps": record.get("step"),
                    "wall_time_s": record.get("wall_time_s"), "tuning_rule": job.get("tuning_rule"),
                    "code_version": evilbench.__version__, "versions": record.get("versions") or {},
                    "error": error},
            "config": cfg, "metrics": [], "spectra": [], "evals": []}


def _evaluate(job: dict, adapter: str | None, out: Path, step: int, backend=None, sampled: bool = True) -> None:
    from evilbench.sweep.evaluation import evaluate_dir, run_scorers

    ev = job["eval"]
    if ev.get("questions") and sampled:
        evaluate_dir(job["model"]["path"], adapter, out, ev, step, backend)
    if ev.get("scores"):
        run_scorers(ev["scores"], job["model"]["path"], adapter, out, {"domain": job["dataset"].get("domain")})


def _base_eval(job: dict, out: Path, backend=None) -> None:
    """The base model's evaluation (step 0) is the same for every run on that base with the same eval
    config and dataset domain: done once into a shared directory (under a lock), copied into the run."""
    import fcntl
    import shutil

    if (out / "summary.json").is_file() or (out / "scores.json").is_file():
        return
    shared = Path(job["base_eval_dir"])
    shared.parent.mkdir(parents=True, exist_ok=True)
    with open(str(shared) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / ".complete").is_file():
            tmp = shared.with_name(shared.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            _evaluate(job, None, tmp, 0, backend)
            (tmp / ".complete").write_text("")
            shutil.rmtree(shared, ignore_errors=True)
            tmp.rename(shared)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(shared, tmp, ignore=shutil.ignore_patterns(".complete"))
    tmp.rename(out)


def execute_job(job: dict) -> dict:
    """{"run_key", "bundle", "seconds", "train_seconds", "eval_seconds", "resumed_from"}."""
    t0 = time.perf_counter()
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep_json = {k: job[k] for k in ("run_key", "model", "dataset", "tuning_rule", "code_version", "sweep")}
    tmp = run_dir / ".sweep.json.tmp"
    tmp.write_text(json.dumps(sweep_json, indent=1) + "\n")
    tmp.replace(run_dir / "sweep.json")
    if job.get("fail_before_training"):  # a test hook: a run whose training raises
        raise RuntimeError(job["fail_before_training"])
    from evilbench.train import TrainConfig, list_checkpoints, train

    try:
        record = train(TrainConfig.from_dict(job["train"]), progress=False, overwrite=bool(job.get("overwrite")))
    except Exception as e:  # noqa: BLE001 - recorded as the run's failure; the sweep goes on
        return {"run_key": job["run_key"], "bundle": failed_bundle(job, "failed", f"{type(e).__name__}: {e}"),
                "seconds": time.perf_counter() - t0, "error_detail": traceback.format_exc(limit=5)}
    t_train = time.perf_counter() - t0
    resumed = [r.get("from_step") for r in record.get("resumes", [])]
    if record.get("status") != "finished":
        return {"run_key": job["run_key"], "seconds": time.perf_counter() - t0,
                "bundle": failed_bundle(job, "failed", record.get("error") or record.get("status"), record)}
    ev = job["eval"]
    total = int(record["step"])
    steps = _steps_to_evaluate(ev, [s for s, _ in list_checkpoints(run_dir)], total)
    adapters = dict(list_checkpoints(run_dir))
    from evilbench.sweep.bundle import EVAL_DIR, bundle_from_run_dir, eval_label
    from evilbench.sweep.evaluation import RunBackend

    t1 = time.perf_counter()
    # a tuning rule's candidate: only the rule's scorers now, the sampled evaluation when it is chosen
    deferred = job.get("sampled_eval") == "deferred" and bool(ev.get("questions"))
    backend = RunBackend(ev["backend"], job["model"]["path"]) if ev.get("questions") else None
    try:
        for step, final in steps:
            out = run_dir / EVAL_DIR / eval_label(step, final)
            if step == 0 and not final and job.get("base_eval_dir"):
                _base_eval(job, out, backend)
                continue
            adapter = str(run_dir / "adapter") if final else (str(adapters[step]) if step else None)
            _evaluate(job, adapter, out, step, backend, sampled=not deferred)
    except Exception as e:  # noqa: BLE001
        return {"run_key": job["run_key"], "seconds": time.perf_counter() - t0,
                "bundle": failed_bundle(job, "failed", f"evaluation: {type(e).__name__}: {e}", record),
                "error_detail": traceback.format_exc(limit=5)}
    finally:
        if backend is not None:
            backend.close()
    t_eval = time.perf_counter() - t1
    bundle = bundle_from_run_dir(run_dir)
    if deferred:
        bundle["run"]["sampled_eval"] = "deferred"
    if bundle["run_key"] != job["run_key"]:
        raise RuntimeError(f"{run_dir}: run key {bundle['run_key']} != the job's {job['run_key']}")
    return {"run_key": job["run_key"], "bundle": bundle, "seconds": time.perf_counter() - t0,
            "train_seconds": t_train, "eval_seconds": t_eval, "resumed_from": resumed}
