"""The sweep runner: expand a spec into jobs with stable run keys, skip what the store already has, run
the rest on an executor, write each result to the store as it arrives.

Phases of `run`: (1) models that must be built first (toy-world bases) are built on the executor;
(2) with a tuning rule, the calibration runs (each optimiser's lr grid on the calibration cell) run
and the rule picks each optimiser's lr from their stored records; (3) the grid runs. A finished run
(in the store) is skipped; an interrupted one (killed runner or worker) resumes from its run
directory's last saved state; a failing run is stored with status "failed" and its reason, and the
sweep goes on (`retry-failed` deletes those records and runs them again from scratch)."""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from evilbench.sweep.spec import SweepSpec

EVAL_KEY_FIELDS = ("questions", "samples", "judge", "convention", "checkpoints", "base", "scores", "backend",
                   "max_new_tokens", "temperature", "top_p", "seed")


@dataclass
class Job:
    run_key: str
    cell: dict                 # model, dataset, optimizer, lr, regularizer, reg_weight, batch_size, seed
    payload: dict              # what execute_job gets
    calibration: bool = False  # a tuning-rule candidate
    grid: bool = True          # a cell of the sweep's grid (a chosen calibration run is both)

    @property
    def label(self) -> str:
        c = self.cell
        return (f"{c['model']} {c['dataset']} {c['optimizer']} lr={c['lr']:g} {c['regularizer']} "
                f"bs={c['batch_size']} seed={c['seed']}")


@dataclass
class Plan:
    jobs: list[Job]                                   # known jobs (calibration + grid with known lr)
    pending_rule: list[dict] = field(default_factory=list)  # grid cells waiting for the tuning rule
    chosen: dict = field(default_factory=dict)        # optimiser -> rule choice


class Runner:
    def __init__(self, spec: SweepSpec, store: str | None = None, workdir: str | None = None,
                 executor: dict | None = None, workers: int | None = None, progress: bool = True, log=None):
        import evilbench

        self.spec = spec
        self.store_path = Path(store or spec.store).expanduser()
        self.workdir = Path(workdir or spec.workdir).expanduser().resolve()
        self.executor_spec = {**spec.executor, **(executor or {})}
        self.workers = workers
        self.progress = progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.code_version = evilbench.__version__
        self._models: dict[str, dict] = {}
        self._datasets: dict[str, dict] = {}
        self._eval_ident: dict[str, tuple] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ resolution
    def model(self, name: str) -> dict:
        if name not in self._models:
            from evilbench.sweep.resources import resolve_model

            self._models[name] = resolve_model(name, self.spec.toyworld, self.spec.train.get("revision"))
        return self._models[name]

    def dataset(self, name: str) -> dict:
        if name not in self._datasets:
            from evilbench.sweep.resources import resolve_dataset

            self._datasets[name] = resolve_dataset(name, self.spec.toyworld)
        return self._datasets[name]

    def store(self, readonly: bool = False):
        from evilbench.store.db import EmptyStoreError, Store

        if readonly and not self.store_path.is_file():
            return None
        try:
            return Store(self.store_path, readonly=readonly)
        except EmptyStoreError:  # a runner killed while creating it: nothing stored yet
            return None

    def _eval_identity(self, model: dict) -> tuple:
        """(eval config for the key, question-set sha256, judge identity) for a model."""
        k = model["revision"] or model["id"]
        if k not in self._eval_ident:
            from evilbench.sweep.evaluation import judge_identity, question_set_identity

            ev = self.spec.eval
            cfg = {f: ev[f] for f in EVAL_KEY_FIELDS}
            qs = question_set_identity(ev, model["path"]) if ev.get("questions") else {"sha256": None}
            self._eval_ident[k] = (cfg, qs["sha256"], judge_identity(ev))
        return self._eval_ident[k]

    def make_job(self, cell: dict, tuning_rule: str | None = None) -> Job:
        from evilbench.sweep.bundle import run_key

        m, d = self.model(cell["model"]), self.dataset(cell["dataset"])
        reg = cell["regularizer"]
        train = {**self.spec.train, "model": m["path"], "dataset": d["path"], "output": "",
                 "optimizer": cell["optimizer"], "lr": float(cell["lr"]),
                 "regularizer": None if reg.kind == "none" else reg.kind,
                 "reg_weight": 1.0 if reg.kind == "none" else reg.weight, "batch_size": cell["batch_size"],
                 "seed": cell["seed"]}
        if m["id"].startswith("toyworld:") and "threads" not in train:
            train["threads"] = self.executor_spec.get("threads", 1)
        ev_cfg, qs_sha, judge = self._eval_identity(m)
        key = run_key(train, m, d["sha256"], ev_cfg, qs_sha, judge, self.code_version)
        run_dir = self.workdir / "runs" / key
        train["output"] = str(run_dir)
        import hashlib

        blob = json.dumps([m["id"], m["revision"], ev_cfg, qs_sha, judge, d.get("domain"), self.code_version],
                          sort_keys=True, default=str)
        base_key = hashlib.sha256(blob.encode()).hexdigest()[:20]
        payload = {"run_key": key, "run_dir": str(run_dir), "train": train,
                   "base_eval_dir": str(self.workdir / "base-evals" / base_key),
                   "model": {k: m[k] for k in ("id", "path", "revision")},
                   "dataset": {k: d[k] for k in ("id", "path", "sha256", "domain")}, "eval": self.spec.eval,
                   "tuning_rule": tuning_rule, "code_version": self.code_version, "sweep": self.spec.name}
        c = {**cell, "regularizer": reg.label, "reg_weight": reg.weight if reg.kind != "none" else None}
        return Job(key, c, payload)

    # ------------------------------------------------------------------ expansion
    def cells(self) -> list[dict]:
        """Every grid cell (lr None where a tuning rule picks it), in a stable order, without repeats."""
        out, seen = [], set()
        per = self.spec.lrs.per_optimizer
        for g in self.spec.grids:
            for model in g["models"]:
                for dataset in g["datasets"]:
                    for opt in g["optimizers"]:
                        for reg in g["regularizers"]:
                            for bs in g["batch_sizes"]:
                                for seed in g["seeds"]:
                                    for lr in (per[opt] if per else [None]):
                                        key = (model, dataset, opt, reg, bs, seed, lr)
                                        if key not in seen:
                                            seen.add(key)
                                            out.append({"model": model, "dataset": dataset, "optimizer": opt,
                                                        "regularizer": reg, "batch_size": bs, "seed": seed,
                                                        "lr": lr})
        return out

    def calibration_cells(self) -> list[dict]:
        from evilbench.sweep.spec import Regularizer
        from evilbench.sweep.tuning import TUNING_RULES, rule_grid

        if not self.spec.lrs.rule:
            return []
        rule = TUNING_RULES.get(self.spec.lrs.rule)
        g = self.spec.grids[0]
        out = []
        for opt in self.spec.optimizers:
            for lr in rule_grid(rule, opt, self.spec.lrs.grid):
                out.append({"model": g["models"][0], "dataset": g["datasets"][0], "optimizer": opt,
                            "regularizer": Regularizer("none"), "batch_size": g["batch_sizes"][0],
                            "seed": g["seeds"][0], "lr": lr})
        return out

    def choose_lrs(self, store, calib: list[Job]) -> dict:
        """optimiser -> the rule's choice, for optimisers whose calibration runs are all in the store."""
        from evilbench.sweep.tuning import TUNING_RULES

        if store is None:
            return {}
        rule = TUNING_RULES.get(self.spec.lrs.rule)
        runs = {r["run_key"]: r for r in store.runs_frame().to_dict("records")} if store.run_keys() else {}
        traj = store.trajectory_frame()
        by_run = {k: g.to_dict("records") for k, g in traj.groupby("run_key")} if len(traj) else {}
        chosen = {}
        for opt in self.spec.optimizers:
            jobs = [j for j in calib if j.cell["optimizer"] == opt]
            if not jobs or not all(j.run_key in runs for j in jobs):
                continue
            cands = [{"lr": j.cell["lr"], "status": runs[j.run_key]["status"],
                      "final_loss": runs[j.run_key]["final_loss"], "run_key": j.run_key,
                      "trajectory": by_run.get(j.run_key, [])} for j in jobs]
            try:
                chosen[opt] = {**rule.choose(cands), "rule": rule.name}
            except RuntimeError as e:
                chosen[opt] = {"lr": None, "reason": str(e), "fallback": True, "rule": rule.name, "candidates": []}
        return chosen

    def plan(self) -> Plan:
        cells = self.cells()
        rule = self.spec.lrs.rule
        calib = [self.make_job(c, rule) for c in self.calibration_cells()]
        for j in calib:
            j.calibration, j.grid = True, False
            if self.spec.eval.get("questions"):  # rules choose by loss or scorers, never by the EM evaluation
                j.payload = {**j.payload, "sampled_eval": "deferred"}
        chosen = self.choose_lrs(self.store(readonly=True), calib) if rule else {}
        jobs = {j.run_key: j for j in calib}
        pending = []
        for c in cells:
            if c["lr"] is None:
                lr = (chosen.get(c["optimizer"]) or {}).get("lr")
                if lr is None:
                    pending.append(c)
                    continue
                c = {**c, "lr": lr}
            j = self.make_job(c, rule)
            if j.run_key in jobs:
                jobs[j.run_key].grid = True
            else:
                jobs[j.run_key] = j
        return Plan(list(jobs.values()), pending, chosen)

    # ------------------------------------------------------------------ status
    def _is_running(self, job: Job) -> bool:
        lock = Path(job.payload["run_dir"]) / ".lock"
        if not lock.is_file():
            return False
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def status(self) -> dict:
        plan = self.plan()
        store = self.store(readonly=True)
        st = store.statuses() if store else {}
        out = {"done": [], "failed": [], "running": [], "pending": [], "waiting_for_lr_rule": len(plan.pending_rule)}
        deferred = store.deferred_run_keys() if store else set()
        for j in plan.jobs:
            s = st.get(j.run_key)
            if s == "finished" and j.grid and j.run_key in deferred:  # chosen, sampled evaluation to come
                out["pending"].append(j)
            elif s == "finished":
                out["done"].append(j)
            elif s is not None:
                out["failed"].append(j)
            elif self._is_running(j):
                out["running"].append(j)
            else:
                out["pending"].append(j)
        out["chosen"] = plan.chosen
        return out

    # ------------------------------------------------------------------ running
    def _executor(self):
        from evilbench.sweep.executors import make_executor
        from evilbench.toyworld.portable_math import PINNED

        env = {k: os.environ[k] for k in (*PINNED, "EVILBENCH_CACHE") if k in os.environ}
        return make_executor(self.executor_spec, self.spec.resources, env=env, workers=self.workers)

    def _prepare(self, ex) -> None:
        preps = {}
        for name in dict.fromkeys(c["model"] for c in self.cells()):
            m = self.model(name)
            if m.get("prepare"):
                preps[m["id"]] = m["prepare"]
        if not preps:
            return
        t = time.perf_counter()
        self.log(f"building {len(preps)} model(s): {', '.join(preps)}")
        for i, res in ex.map("evilbench.sweep.resources:prepare_model", list(preps.values())):
            if "error" in res:
                raise RuntimeError(f"building {list(preps)[i]} failed: {res['error']}")
            self._models[res["name"]]["prepare"] = None
        self.timings["prepare_s"] = self.timings.get("prepare_s", 0.0) + time.perf_counter() - t

    def _run_jobs(self, ex, store, jobs: list[Job], desc: str, stats: dict, retry: set) -> None:
        from tqdm.auto import tqdm

        from evilbench.store.db import ConflictError
        from evilbench.sweep.worker import failed_bundle

        have = store.statuses()
        # grid cells stored as deferred calibration candidates get their sampled evaluation now (their
        # training and scores are reused from the run directory)
        complete = store.deferred_run_keys() if any(j.grid for j in jobs) else set()
        complete = {j.run_key for j in jobs if j.grid and j.run_key in complete}
        todo = [j for j in jobs if j.run_key not in have or j.run_key in complete]
        stats.setdefault("_skipped", set()).update(j.run_key for j in jobs if j.run_key in have
                                                   and j.run_key not in complete)
        stats["skipped"] = len(stats["_skipped"] - complete)
        if not todo:
            return
        payloads = []
        for j in todo:
            p = dict(j.payload)
            if j.run_key in retry:
                p["overwrite"] = True
            if j.grid:
                p.pop("sampled_eval", None)
            payloads.append(p)
        bar = tqdm(total=len(todo), desc=desc, disable=not self.progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            for i, res in ex.map("evilbench.sweep.worker:execute_job", payloads):
                job = todo[i]
                t_w = time.perf_counter()
                bundle = res.get("bundle")
                if bundle is None:  # the job raised or its worker died
                    bundle = failed_bundle(job.payload, "failed", res.get("error", "unknown error"))
                    self.log(f"failed: {job.label}: {res.get('error')}")
                status = bundle["run"]["status"]
                completing = job.run_key in complete
                if completing and status != "finished":  # the stored candidate stays as it was
                    stats["_incomplete"].add(job.run_key)
                    self.log(f"could not complete the evaluation of {job.label}: {bundle['run'].get('error')}")
                else:
                    try:
                        store.write_run(bundle, sweep=self.spec.name, replace=completing)
                    except ConflictError as e:
                        self.log(f"error: {e}")
                        stats["conflicts"] += 1
                stats["store_write_s"] += time.perf_counter() - t_w
                stats["evaluated" if completing and status == "finished" else
                      "done" if status == "finished" else "failed"] += 1
                stats["job_seconds"] += res.get("seconds", 0.0) or 0.0
                if res.get("resumed_from"):
                    stats["resumed"].append({"run_key": job.run_key, "from_step": res["resumed_from"]})
                if status != "finished":
                    self.log(f"run failed ({job.label}): {bundle['run'].get('error')}")
                bar.set_postfix_str(f"{job.cell['optimizer']} {job.cell['regularizer']}: {status}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
            stats["phase_wall_s"] += time.perf_counter() - t0

    def run(self, retry_failed: bool = False) -> dict:
        t_start = time.perf_counter()
        stats = {"done": 0, "evaluated": 0, "failed": 0, "skipped": 0, "conflicts": 0, "resumed": [],
                 "job_seconds": 0.0, "store_write_s": 0.0, "phase_wall_s": 0.0, "_incomplete": set()}
        store = self.store()
        retry = set()
        if retry_failed:
            for k, s in store.statuses().items():
                if s != "finished":
                    store.delete_run(k)
                    retry.add(k)
        plan = self.plan()
        self.timings["plan_s"] = time.perf_counter() - t_start
        with self._executor() as ex:
            self._prepare(ex)
            if self.spec.lrs.rule:
                calib = [j for j in plan.jobs if j.calibration]
                self._run_jobs(ex, store, calib, "lr rule runs", stats, retry)
                plan = self.plan()
                for opt, ch in plan.chosen.items():  # the analysis tells the grid's runs from candidates
                    store.set_meta(f"lr_choice/{self.spec.name}/{opt}", {"lr": ch["lr"], "rule": ch["rule"],
                                                                         "reason": ch["reason"]})
                    self.log(f"lr rule {self.spec.lrs.rule}: {opt:<8} lr {ch['lr']}  ({ch['reason']})")
                if plan.pending_rule:
                    self.log(f"{len(plan.pending_rule)} grid cell(s) have no lr: the rule could not choose one")
            grid = [j for j in plan.jobs if j.grid]
            self._run_jobs(ex, store, grid, "sweep runs", stats, retry)
        statuses = store.statuses()
        keys = [j.run_key for j in plan.jobs]
        # grid cells whose sampled evaluation is still deferred (its completion failed): not finished
        unevaluated = store.deferred_run_keys() & {j.run_key for j in plan.jobs if j.grid}
        summary = {"spec": self.spec.name, "store": str(self.store_path), "jobs": len(keys),
                   "finished": sum(1 for k in keys if statuses.get(k) == "finished" and k not in unevaluated),
                   "not_evaluated": sorted(unevaluated),
                   "failed": sorted(k for k in keys if statuses.get(k) not in (None, "finished")),
                   "missing": sorted(k for k in keys if k not in statuses),
                   "waiting_for_lr_rule": len(plan.pending_rule), "lr_choices": plan.chosen,
                   "this_call": {k: v for k, v in stats.items() if not k.startswith("_")},
                   "timings": dict(self.timings),
                   "wall_s": time.perf_counter() - t_start}
        store.close()
        self._write_manifest(summary)
        return summary

    def _write_manifest(self, summary: dict) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.workdir / ".sweep-summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        tmp.replace(self.workdir / "sweep-summary.json")
