"""The LoRA SFT loop: one code path for `evilbench train` and for in-process callers (toy world, sweeps).

Per optimiser step: grad_accum micro-batches, loss = summed token cross-entropy over assistant tokens /
assistant tokens in the step (an exact token mean whatever the padding and accumulation), plus the
spectral regulariser (once per step), gradient clipping, optimiser and scheduler step. No host sync
except at logging steps (CPU: free) and checkpoints; spectra only at checkpoints."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

from evilbench._env import versions
from evilbench.errors import UserError
from evilbench.models.loading import SMALL_MODEL_PARAMS
from evilbench.train import rundir as rd
from evilbench.train.config import TrainConfig, config_diff
from evilbench.train.schedule import checkpoint_steps, lr_factor

log = logging.getLogger("evilbench.train")
_TOKENIZED: OrderedDict[tuple, object] = OrderedDict()  # in-process cache of tokenised datasets


class ConfigMismatchError(UserError, ValueError):
    """An existing run directory was started with a different configuration."""


def _save_adapter(model, path: Path, model_card: bool) -> None:
    """The adapter in peft format (adapter_model.safetensors + adapter_config.json). Checkpoints skip
    peft's README model card: rendering it (~50 ms) costs more than saving a small adapter, and the
    toy-world demo saves 7 checkpoints in each of ~90 runs."""
    if model_card:
        model.save_pretrained(str(path), safe_serialization=True)
        return
    model.create_or_update_model_card = lambda output_dir: None  # instance attribute shadows the method
    try:
        model.save_pretrained(str(path), safe_serialization=True)
    finally:
        del model.create_or_update_model_card


def train_step(model, micro: list[dict], params, optimizer, scheduler=None, regularizer=None,
               max_grad_norm: float | None = None):
    """One optimiser step over the micro-batches of `micro` (dicts from batches.collate). The loss is the
    summed cross-entropy over assistant tokens divided by the step's assistant-token count. Returns
    (loss, regulariser value, gradient norm before clipping) as 0-d tensors on the device: no host sync."""
    import torch
    import torch.nn.functional as F

    n_trained = max(1, sum(b["n_trained"] for b in micro))
    loss_total = None
    for b in micro:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum") / n_trained
        loss.backward()
        loss_total = loss.detach() if loss_total is None else loss_total + loss.detach()
    reg_value = torch.zeros((), device=loss_total.device)
    if regularizer is not None:
        reg = regularizer()
        reg.backward()
        reg_value = reg.detach().float()
    clip = max_grad_norm if max_grad_norm else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).detach().float()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_total, reg_value, grad_norm


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def train(config: TrainConfig | dict, progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or resume, or find finished) the run described by `config`; returns run.json's content.

    An existing run directory with the same configuration resumes from its last saved state; a finished
    one is returned as is; a different configuration raises ConfigMismatchError; `overwrite` starts
    afresh. A non-finite loss stops the run with status "failed" (the returned dict says why)."""
    import torch

    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    cfg.validate()
    run_dir = Path(cfg.output).expanduser()
    run_dir.mkdir(parents=True, exist_ok=True)
    with rd.RunLock(run_dir):
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # the caller's RNG state is left untouched
            return _Run(cfg, run_dir, progress, overwrite).execute()


class _Run:
    def __init__(self, cfg: TrainConfig, run_dir: Path, progress: bool, overwrite: bool):
        self.cfg, self.dir, self.progress, self.overwrite = cfg, run_dir, progress, overwrite
        self.record: dict = {}
        self._recovered: list[dict] = []  # damaged state or adapters found on this start, and what was done

    # ------------------------------------------------------------------ bookkeeping
    def _existing(self) -> dict | None:
        path = self.dir / rd.RUN_JSON
        rd.remove_temporaries(self.dir)
        if self.overwrite:
            rd.remove_run(self.dir)
            return None
        if not path.is_file():
            return None
        try:
            old = rd.read_json(path)
        except rd.CorruptStateError as e:
            raise rd.CorruptStateError(path, f"{e}; --overwrite starts the run again") from None
        diff = config_diff(old.get("config", {}), self.cfg.to_dict())
        if diff:
            diffs = "; ".join(f"{k}: {a!r} in run.json, {b!r} now" for k, (a, b) in diff.items())
            raise ConfigMismatchError(
                f"{self.dir} holds a run with a different configuration ({diffs}); use another output "
                "directory, or --overwrite to discard the existing run")
        return old

    def _save_record(self) -> None:
        rd.write_json_atomic(self.dir / rd.RUN_JSON, self.record)

    # ------------------------------------------------------------------ setup
    def _setup(self, old: dict | None):
        import torch

        from evilbench.data.chat import load_chat_jsonl
        from evilbench.data.registry import resolve
        from evilbench.models.loading import load_model, load_tokenizer, model_revision, resolve_dtype, resolve_source
        from evilbench.models.lora import apply_lora, lora_config, lora_modules
        from evilbench.train.batches import BatchPlan, tokenize_dataset

        cfg = self.cfg
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(cfg.device if cfg.device != "auto" else auto)
        dataset = resolve(cfg.dataset, cfg.data_dir)
        if old and old.get("dataset", {}).get("sha256") not in (None, dataset.sha256):
            raise ConfigMismatchError(f"dataset {cfg.dataset!r} changed since this run started "
                                      f"(sha256 {old['dataset']['sha256']} -> {dataset.sha256}); use --overwrite")
        source = resolve_source(cfg.model, cfg.revision, trust_remote_code=cfg.trust_remote_code)
        revision = model_revision(source)
        if old and old.get("model", {}).get("revision") not in (None, revision):
            raise ConfigMismatchError(f"model {cfg.model!r} changed since this run started "
                                      f"(revision {old['model']['revision']} -> {revision}); use --overwrite")
        tokenizer = load_tokenizer(source, cfg.trust_remote_code)
        spec = source.spec
        template_kwargs = (cfg.chat_template_kwargs if cfg.chat_template_kwargs is not None
                           else spec.chat_template_kwargs)

        examples = load_chat_jsonl(dataset.path, limit=cfg.max_examples)  # validates every line first
        self.plan = BatchPlan(len(examples), cfg.batch_size, cfg.grad_accum, cfg.seed)
        steps_per_epoch = math.ceil(len(examples) / self.plan.per_step)
        self.total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        used = self.plan.used(self.total)  # tokenise only what the run's steps consume
        partial = len(used) < len(examples)
        key = (dataset.sha256, source.location, revision, json.dumps(template_kwargs, sort_keys=True),
               cfg.max_seq_len, cfg.max_examples,
               (cfg.batch_size, cfg.grad_accum, cfg.seed, self.total) if partial else None)
        data = _TOKENIZED.get(key)
        if data is None:
            data = tokenize_dataset(tokenizer, examples, template_kwargs, cfg.max_seq_len, self.progress,
                                    indices=used if partial else None)
            if data.n_truncated or data.n_dropped:
                log.warning("%s: %d conversation(s) truncated to max_seq_len=%d, %d of them left without an "
                            "assistant token (no loss from them)", dataset.path, data.n_truncated, cfg.max_seq_len,
                            data.n_dropped)
            _TOKENIZED[key] = data
            while len(_TOKENIZED) > 4:
                _TOKENIZED.popitem(last=False)
        else:
            _TOKENIZED.move_to_end(key)
        self.data = data
        self.warmup = min(self.total, math.ceil(cfg.warmup_ratio * self.total) if cfg.warmup_ratio is not None
                          else cfg.warmup_steps)
        self.ckpt_steps = checkpoint_steps(self.total, cfg.checkpoints)

        dtype = resolve_dtype(cfg.dtype, str(self.device))
        model = load_model(source, dtype=cfg.dtype, device=str(self.device), trust_remote_code=cfg.trust_remote_code,
                           attn_implementation=cfg.attn_implementation)
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        n_base = sum(p.numel() for p in model.parameters())
        lcfg = lora_config(spec, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, rslora=cfg.rslora,
                           target_modules=cfg.target_modules, target_parameters=cfg.target_parameters)
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(cfg.seed)
        self.model = apply_lora(model, lcfg).to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.param_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if not self.params:
            from evilbench.models.registry import ModelError

            raise ModelError(f"LoRA produced no trainable parameters in {cfg.model}: check --target-modules / "
                             "--target-parameters")

        from evilbench import optim

        self.lr = cfg.lr if cfg.lr is not None else optim.default_lr(cfg.optimizer)
        self.optimizer = optim.build(cfg.optimizer, self.params, lr=self.lr, **cfg.optimizer_kwargs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total, self.warmup, cfg.lr_schedule))
        self.regularizer = None
        if cfg.regularizer_kind:
            from evilbench.spectral import SpectralRegularizer

            # non-finite values are caught by the loop's own checks at logging steps (no per-step host sync)
            self.regularizer = SpectralRegularizer(self.model, kind=cfg.regularizer_kind, weight=cfg.reg_weight,
                                                   check_finite=False)

        lcfg_targets = lcfg.target_modules if isinstance(lcfg.target_modules, str) else sorted(lcfg.target_modules)
        self.record = {
            "schema_version": rd.RUN_SCHEMA_VERSION, "status": "running", "error": None,
            "config": cfg.to_dict(),
            "resolved": {
                "lr": self.lr, "total_steps": self.total, "warmup_steps": self.warmup,
                "steps_per_epoch": steps_per_epoch, "examples_per_step": self.plan.per_step,
                "checkpoint_steps": self.ckpt_steps, "device": str(self.device),
                "dtype": str(dtype).replace("torch.", ""),
                "chat_template_kwargs": template_kwargs, "target_modules": lcfg_targets,
                "target_parameters": list(lcfg.target_parameters or []), "lora_scaling": (
                    cfg.lora_alpha / math.sqrt(cfg.lora_r) if cfg.rslora else cfg.lora_alpha / cfg.lora_r),
                "regularizer": cfg.regularizer_kind, "optimizer_class": type(self.optimizer).__name__,
            },
            "dataset": {"name": dataset.name, "path": str(dataset.path), "sha256": dataset.sha256, "rows": dataset.rows,
                        "conversations_used": data.n_tokenized, "truncated": data.n_truncated,
                        "dropped": data.n_dropped,
                        "assistant_tokens": int(data.n_trained.sum()), "tokens": int(data.lengths.sum())},
            "model": {"name": cfg.model, "location": source.location, "revision": revision,
                      "architecture": type(model).__name__, "model_type": getattr(model.config, "model_type", None),
                      "family": spec.family or None, "base_params": n_base,
                      "trainable_params": sum(p.numel() for p in self.params),
                      "lora_modules": len(lora_modules(self.model))},
            "versions": versions(),
            "seeds": {"seed": cfg.seed, "lora_init": f"torch.manual_seed({cfg.seed}) before get_peft_model",
                      "data_order": f"per-epoch torch.randperm with generator seed {cfg.seed}*1000003+epoch"},
            "step": 0, "checkpoints": [], "final_loss": None, "last_loss": None,
            "started_at": _now(), "finished_at": None, "wall_time_s": 0.0, "resumes": [],
        }

    # ------------------------------------------------------------------ resume state
    def _save_resume(self, step: int, step_losses: list[float], wall: float) -> None:
        import torch
        from safetensors.torch import save_file

        tmp = Path(tempfile.mkdtemp(prefix=".resume-", dir=self.dir))
        save_file({n: p.detach().contiguous().cpu() for n, p in zip(self.param_names, self.params)},
                  str(tmp / "trainable.safetensors"))
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng},
                   tmp / "trainer_state.pt")
        rd.write_json_atomic(tmp / "state.json", {"step": step, "step_losses": step_losses, "wall_time_s": wall})
        rd.seal(tmp)
        # keep the state before this one: the fallback should this one be damaged later
        cur, prev = self.dir / rd.RESUME, self.dir / rd.RESUME_PREV
        if cur.is_dir():
            if prev.exists():
                shutil.rmtree(prev)
            os.rename(cur, prev)
        os.rename(tmp, cur)

    def _resume_candidates(self) -> list[tuple[int, Path]]:
        """Saved training states, newest first: (step, directory)."""
        out = []
        for name in (rd.RESUME, rd.RESUME + ".old", rd.RESUME_PREV):  # .old: a kill inside a replace
            d = self.dir / name
            if (d / "state.json").is_file():
                try:
                    out.append((int(rd.read_json(d / "state.json")["step"]), d))
                except (rd.CorruptStateError, KeyError, TypeError, ValueError):
                    out.append((-1, d))  # damaged: reported when tried
        return sorted(out, key=lambda x: -x[0])

    def _load_state(self, d: Path) -> tuple[int, list[float], float]:
        """Load the training state in `d` into the model, optimiser, scheduler and RNG; raises
        CorruptStateError naming the damaged file (nothing is loaded then)."""
        import torch
        from safetensors.torch import load_file

        problems = rd.manifest_problems(d) if (d / rd.MANIFEST).is_file() else []  # older runs: no manifest
        bad = problems[0] if problems else rd.safetensors_problem(d / "trainable.safetensors")
        if bad:
            raise rd.CorruptStateError(Path(bad.split(":")[0]), bad)
        state = rd.read_json(d / "state.json")
        try:
            tensors = load_file(str(d / "trainable.safetensors"))
            blob = torch.load(d / "trainer_state.pt", weights_only=True, map_location=self.device)
        except Exception as e:  # noqa: BLE001 - an unreadable state of an older run without a manifest
            raise rd.CorruptStateError(d, f"{d}: unreadable training state ({type(e).__name__}: {e})") from None
        if sorted(tensors) != sorted(self.param_names):
            raise ConfigMismatchError(f"{d}: saved parameters do not match this model's LoRA parameters")
        with torch.no_grad():
            for n, p in zip(self.param_names, self.params):
                p.copy_(tensors[n].to(p.device, p.dtype))
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng"]["cpu"].cpu())
        if "cuda" in blob["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in blob["rng"]["cuda"]])
        return state["step"], list(state["step_losses"]), float(state["wall_time_s"])

    def _load_resume(self) -> tuple[int, list[float], float] | None:
        """The newest intact saved state, loaded; a damaged newer one is reported and skipped. Raises
        CorruptStateError when states exist but none is intact."""
        candidates = self._resume_candidates()
        damaged = []
        for _, d in candidates:
            try:
                loaded = self._load_state(d)
            except rd.CorruptStateError as e:
                damaged.append(str(e))
                continue
            if damaged:
                log.warning("%s: damaged training state skipped: %s; resuming from the previous intact state "
                            "(step %d, %s)", self.dir, "; ".join(damaged), loaded[0], d.name)
                self._recovered.append({"damaged": damaged, "resumed_from": d.name, "step": loaded[0], "at": _now()})
            return loaded
        if damaged:
            raise rd.CorruptStateError(candidates[0][1], f"no intact training state to resume from: "
                                       f"{'; '.join(damaged)}; --overwrite starts the run again")
        return None

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, step: int) -> None:
        final = rd.checkpoint_dir(self.dir, step)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        _save_adapter(self.model, tmp / "adapter", model_card=False)
        sha = rd.seal(tmp / "adapter")[rd.ADAPTER_WEIGHTS]
        rd.replace_dir(tmp, final)
        self.record.setdefault("checkpoint_sha256", {})[str(step)] = sha
        from evilbench.spectral import spectra_table

        rows = spectra_table(self.model)
        rd.append_jsonl(self.dir / rd.SPECTRA, [{"step": step, **r} for r in rows])

    # ------------------------------------------------------------------ main
    def _check_finished(self, old: dict) -> dict:
        """A finished run's final adapter must be intact; a damaged one is restored from the last
        checkpoint (the same weights) when that is intact, else the run cannot be used as it is."""
        final = self.dir / rd.FINAL_ADAPTER
        problems = rd.adapter_problems(final)
        if not problems:
            return old
        ckpts = rd.list_checkpoints(self.dir)
        last = ckpts[-1] if ckpts else None
        if last is None or last[0] != old.get("step") or rd.adapter_problems(last[1]):
            raise rd.CorruptStateError(final, f"damaged final adapter: {problems[0]}, and no intact last checkpoint "
                                              "to restore it from; --overwrite trains the run again")
        tmp = self.dir / f".{rd.FINAL_ADAPTER}-restore"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(last[1], tmp)
        sha = rd.seal(tmp)[rd.ADAPTER_WEIGHTS]
        rd.replace_dir(tmp, final)
        log.warning("%s: damaged final adapter (%s) restored from the checkpoint of step %d", self.dir,
                    problems[0], last[0])
        old.setdefault("recovered", []).append({"damaged": problems, "restored_from": str(last[1]), "at": _now()})
        old["adapter_sha256"] = sha
        rd.write_json_atomic(self.dir / rd.RUN_JSON, old)
        return old

    def _drop_damaged_checkpoints(self, start: int) -> None:
        """Checkpoints up to the resumed step that are damaged cannot be recreated: remove them (so
        nothing evaluates them) and say so in run.json."""
        for s, path in rd.list_checkpoints(self.dir):
            problems = rd.adapter_problems(path) if s <= start else []
            if problems:
                log.warning("%s: damaged checkpoint of step %d removed: %s", self.dir, s, problems[0])
                shutil.rmtree(path.parent)
                self.record["checkpoints"] = [c for c in self.record["checkpoints"] if c != s]
                self.record.get("checkpoint_sha256", {}).pop(str(s), None)
                self._recovered.append({"damaged": problems, "removed_checkpoint": s, "at": _now()})

    def execute(self) -> dict:
        old = self._existing()
        if old is not None and old.get("status") == "finished":
            old = self._check_finished(old)
            log.info("%s: run already finished (final loss %s); not retraining", self.dir, old.get("final_loss"))
            return old
        if old is not None and old.get("status") == "failed":
            log.error("%s: run failed before (%s); not retrying (use overwrite to start again)", self.dir,
                      old.get("error"))
            return old
        try:
            start, step_losses, wall_before = self._prepare(old)
        except BaseException as e:  # run.json must not keep saying "running" for a run that cannot start
            if old is not None and old.get("status") == "running":
                rd.write_json_atomic(self.dir / rd.RUN_JSON, {**old, "status": "crashed",
                                                              "error": f"{type(e).__name__}: {e}"})
            raise
        import torch

        threads_before = torch.get_num_threads()
        threads = self.cfg.threads
        if threads is None and self.device.type == "cpu" and self.record["model"]["base_params"] < SMALL_MODEL_PARAMS:
            threads = 1
        if threads:
            torch.set_num_threads(threads)
        self.record.update(step=start, torch_threads=torch.get_num_threads())
        self.record["pid"] = os.getpid()
        self._save_record()
        try:
            self._loop(start, step_losses, wall_before)
        except BaseException as e:  # interrupted or crashed (e.g. out of memory): rerunning resumes
            self.record.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "crashed",
                               error=None if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}")
            self._save_record()
            raise
        finally:
            torch.set_num_threads(threads_before)
        return self.record

    def _prepare(self, old: dict | None) -> tuple[int, list[float], float]:
        """Set up the model and data, load the newest intact saved state and tidy the directory to it."""
        self._setup(old)
        start, step_losses, wall_before = 0, [], 0.0
        resumed = self._load_resume() if old is not None else None
        if old is not None:
            self.record["recovered"] = list(old.get("recovered", []))
        if resumed is not None:
            start, step_losses, wall_before = resumed
            keep = ("started_at", "checkpoints", "resumes", "checkpoint_sha256")
            self.record.update({k: old[k] for k in keep if k in old})
            self.record["checkpoints"] = [s for s in self.record["checkpoints"] if s <= start]
            self.record["checkpoint_sha256"] = {k: v for k, v in self.record.get("checkpoint_sha256", {}).items()
                                                if int(k) <= start}
            self.record["resumes"].append({"from_step": start, "at": _now()})
            log.info("%s: resuming from step %d of %d", self.dir, start, self.total)
        for name in (rd.METRICS, rd.SPECTRA):  # drop anything logged after the state we resume from
            if start == 0:
                (self.dir / name).unlink(missing_ok=True)
            else:
                rd.truncate_jsonl(self.dir / name, start)
        for s, path in rd.list_checkpoints(self.dir):
            if s > start:
                shutil.rmtree(path.parent)
        self._drop_damaged_checkpoints(start)
        self.record["recovered"] = self.record.get("recovered", []) + self._recovered
        if not self.record["recovered"]:
            del self.record["recovered"]
        return start, step_losses, wall_before

    def _loop(self, start: int, step_losses: list[float], wall_before: float) -> None:
        import torch
        from tqdm.auto import tqdm

        from evilbench.train.batches import collate

        cfg, model, dev = self.cfg, self.model, self.device
        ckpts = set(self.ckpt_steps)
        t0 = time.perf_counter()
        last_resume_save = time.monotonic()
        window_t, window_tokens = time.perf_counter(), 0
        pending = []  # (step, loss, reg, grad_norm, lr, tokens, trained) awaiting one host sync
        bar = tqdm(total=self.total, initial=start, desc=f"train {Path(str(cfg.model)).name}",
                   disable=not self.progress, dynamic_ncols=True)

        def wall():
            return wall_before + time.perf_counter() - t0

        def flush(step: int) -> bool:
            """Write pending metrics; False if a loss or gradient norm is not finite."""
            nonlocal window_t, window_tokens
            if not pending:
                return True
            vals = torch.stack([torch.stack([p[1], p[2], p[3]]) for p in pending]).tolist()
            now = time.perf_counter()
            tps = window_tokens / max(now - window_t, 1e-9)
            window_t, window_tokens = now, 0
            rows = []
            for (s, _, _, _, lr, tokens, trained), (loss, reg, gnorm) in zip(pending, vals):
                step_losses.append(loss)
                rows.append({"step": s, "loss": loss, "lr": lr, "reg": reg if self.regularizer else None,
                             "grad_norm": gnorm, "tokens": tokens, "assistant_tokens": trained,
                             "epoch": round(self.plan.epoch_of(s), 4)})
            window_loss = sum(v[0] for v in vals) / len(vals)
            rows[-1].update(loss_window=window_loss, tokens_per_s=round(tps, 1), elapsed_s=round(wall(), 3))
            pending.clear()
            rd.append_jsonl(self.dir / rd.METRICS, rows)
            bad = next(((r["step"], k, r[k]) for r in rows for k in ("loss", "grad_norm")
                        if not math.isfinite(r[k])), None)
            if bad is not None:
                s, k, v = bad
                self._fail(f"non-finite {k.replace('_', ' ')} ({v}) at step {s}", s, step_losses, wall())
                return False
            bar.set_postfix(loss=f"{window_loss:.4f}", lr=f"{rows[-1]['lr']:.2e}", refresh=False)
            return True

        log.info("%s: %d optimiser steps of %d conversations each (batch size %d x %d accumulated), up to %d "
                 "tokens per conversation, on %s%s", self.dir, self.total - start, self.plan.per_step,
                 cfg.batch_size, cfg.grad_accum, cfg.max_seq_len, self.device,
                 f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else "")
        step_tokens = 0
        for step in range(start, self.total):
            if step == start + 1:  # the first step of this process has run: say what a step costs
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                took = time.perf_counter() - t0
                self.record["first_step_s"] = round(took, 3)
                log.info("%s: the first step took %.1f s (%d tokens); the remaining %d steps take about %s",
                         self.dir, took, step_tokens, self.total - step,
                         _duration(took * (self.total - step)))
            lr_now = self.optimizer.param_groups[0]["lr"]
            micro = [collate(self.data, idx, dev) for idx in self.plan.indices(step).split(cfg.batch_size)]
            loss_total, reg_value, grad_norm = train_step(model, micro, self.params, self.optimizer, self.scheduler,
                                                          self.regularizer, cfg.max_grad_norm)
            step_tokens = sum(b["n_tokens"] for b in micro)
            window_tokens += step_tokens
            n_trained = sum(b["n_trained"] for b in micro)
            done = step + 1
            pending.append((done, loss_total, reg_value, grad_norm, lr_now,
                            sum(b["n_tokens"] for b in micro), n_trained))
            bar.update(1)
            at_ckpt = done in ckpts
            if done % cfg.log_every == 0 or at_ckpt or done == self.total:
                if not flush(done):
                    bar.close()
                    return
            if at_ckpt:
                if not bool(torch.stack([p.isfinite().all() for p in self.params]).all()):
                    self._fail(f"non-finite LoRA parameters after step {done}", done, step_losses, wall())
                    bar.close()
                    return
                self._save_checkpoint(done)
                self.record["checkpoints"].append(done)
            if at_ckpt or time.monotonic() - last_resume_save > cfg.resume_every_s:
                if not flush(done):
                    bar.close()
                    return
                if done < self.total:
                    self._save_resume(done, step_losses, wall())
                    last_resume_save = time.monotonic()
                self.record.update(step=done, wall_time_s=round(wall(), 3))
                self._save_record()
        bar.close()
        self._finish(step_losses, wall())

    def _summary(self, step_losses: list[float]) -> dict:
        k = max(1, round(0.05 * len(step_losses)))
        finite = [x for x in step_losses[-k:] if math.isfinite(x)]
        return {"final_loss": sum(finite) / len(finite) if finite else None,
                "final_loss_window": k, "last_loss": step_losses[-1] if step_losses else None}

    def _finish(self, step_losses: list[float], wall: float) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=self.dir))
        _save_adapter(self.model, tmp, model_card=True)
        sha = rd.seal(tmp)[rd.ADAPTER_WEIGHTS]
        rd.replace_dir(tmp, self.dir / rd.FINAL_ADAPTER)
        self.record.update(status="finished", adapter_sha256=sha, step=self.total, wall_time_s=round(wall, 3),
                           finished_at=_now(),
                           **self._summary(step_losses))
        self._save_record()
        for name in (rd.RESUME, rd.RESUME_PREV):
            shutil.rmtree(self.dir / name, ignore_errors=True)
        log.info("%s: finished %d steps, final loss %.4f", self.dir, self.total, self.record["final_loss"])

    def _fail(self, reason: str, step: int, step_losses: list[float], wall: float) -> None:
        self.record.update(status="failed", error=reason, step=step, wall_time_s=round(wall, 3), finished_at=_now(),
                           **self._summary(step_losses))
        self._save_record()
        log.error("%s: training failed: %s", self.dir, reason)
