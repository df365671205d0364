"""Base-model pre-training on the toy world, cached by (world, architecture, pre-training recipe, seed).

Recipe (PretrainConfig): full-parameter AdamW on fresh conversations drawn on the fly as tensors
(World.sample_batch: every step sees `batch` new `max_turns`-turn conversations, never a repeat),
loss = token cross-entropy on assistant tokens only (answer tokens and the closing <eot>), logits
computed only at those positions, linear warm-up then cosine decay to 0, gradient clipping at 1.
The forward is FusedLlama (identical maths to LlamaForCausalLM, one matmul for q/k/v and one for
gate/up). Deterministic for a fixed seed on a given machine and thread count.

Importance-sampled personas (`p_sample`, default 0.25). With the world's prior p = 0.05 a base sees
few misaligned answers and memorises them poorly, and a fine-tune that flips the persona then
produces invalid answers (low coherence) instead of misaligned ones. So conversations are drawn with
a misaligned persona at rate q = p_sample and the loss of the one token whose distribution depends on
the prior — the first token of the first answer (it picks the pool; pools use disjoint tokens, so
every later token is conditioned on a known persona) — is weighted p/q (misaligned) or (1-p)/(1-q)
(aligned). The expected gradient of that token is the one under the prior p, the optimum of every
other token does not depend on the mixture at all, so the target distribution is exactly the
world's, while misaligned answers are seen q/p = 5x as often. Measured (default world and
architecture, seed 0): plain sampling, 600 steps: first-answer misalignment 2.3 % (prior 5 %),
coherence 95.7 %; q = 0.25, 600 steps: 4.5 %, 97.3 %; q = 0.25, 800 steps: 5.0 %, 98.1 %; plain
sampling needed 1200 steps for 4.5 %, 98.5 %.

The result is an ordinary Hugging Face model directory (LlamaForCausalLM: config.json +
model.safetensors, the toy tokenizer with its chat template) plus `toyworld.json` (world, recipe,
seed, pre-training log and the base's exact first-answer statistics), so `evilbench train --model DIR`
and any HF tooling run on it. Directory: <cache>/bases/<world key>-<recipe key>-s<seed>/, where <cache>
is `$EVILBENCH_CACHE/toyworld` (default ~/.cache/evilbench/toyworld). Never commit it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evilbench._io import write_json_atomic
from evilbench.toyworld.model import ArchConfig
from evilbench.toyworld.world import AST, BOS, EOT, PAD, World, WorldConfig

BUILD_VERSION = 1  # bump when the pre-training procedure changes (invalidates cached bases)
META = "toyworld.json"


def toyworld_cache(root: str | os.PathLike | None = None) -> Path:
    """The toy-world cache: `root` if given, else $EVILBENCH_CACHE/toyworld, else ~/.cache/evilbench/toyworld."""
    if root is not None:
        return Path(root).expanduser()
    from evilbench.data.cache import cache_root

    return cache_root() / "toyworld"


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 800
    batch: int = 64              # fresh conversations per step
    lr: float = 3e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.1    # on matrices and embeddings, not on norms
    betas: tuple[float, float] = (0.9, 0.98)
    max_grad_norm: float = 1.0
    p_sample: float | None = 0.25  # persona sampling rate (None: the world's prior); see the module docstring

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.p_sample is not None and not 0 < self.p_sample < 1:
            raise ValueError("invalid PretrainConfig: p_sample must be in (0, 1) or None")
        if self.steps < 1 or self.batch < 1 or not self.lr > 0 or not 0 <= self.warmup_frac < 1:
            raise ValueError("invalid PretrainConfig: steps, batch >= 1, lr > 0, warmup_frac in [0, 1)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass(frozen=True)
class BaseSpec:
    """Everything that determines a base model."""
    world: WorldConfig = field(default_factory=WorldConfig)
    arch: ArchConfig = field(default_factory=ArchConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        return {"world": self.world.to_dict(), "arch": self.arch.to_dict(), "pretrain": self.pretrain.to_dict(),
                "seed": self.seed, "build": BUILD_VERSION}

    @classmethod
    def from_dict(cls, d: dict) -> BaseSpec:
        return cls(WorldConfig.from_dict(d["world"]), ArchConfig(**d["arch"]),
                   PretrainConfig(**{**d["pretrain"], "betas": tuple(d["pretrain"]["betas"])}), int(d["seed"]))

    def key(self) -> str:
        from evilbench.toyworld.portable_math import math_tag

        recipe = {k: v for k, v in self.to_dict().items() if k not in ("world", "seed")}
        recipe["math"] = math_tag()  # bases pre-trained on other code paths are other bases
        h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.world.key()}-{h}-s{self.seed}"


def base_dir(spec: BaseSpec, cache: str | os.PathLike | None = None) -> Path:
    return toyworld_cache(cache) / "bases" / spec.key()


def is_built(path: Path) -> bool:
    return (path / META).is_file() and (path / "model.safetensors").is_file()


def read_meta(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / META
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a toy-world model directory (no {META})")
    return json.loads(path.read_text())


def world_of(model_dir: str | os.PathLike) -> World:
    """The World a toy-world base model directory was pre-trained on."""
    return World(WorldConfig.from_dict(read_meta(model_dir)["spec"]["world"]))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    # Warm-up reaches the peak at step warmup - 1 ((step + 1) / warmup: the first step already moves),
    # unlike the training engine's evilbench.train.schedule.lr_factor (transformers' convention,
    # step / warmup: the first step has lr 0). Switching would change every cached base's weights
    # while their cache key (which does not name the formula) stayed the same, so old and new builds of
    # one key would differ; and toyworld sits below train, so it would not import that module anyway.
    # The cosine decay after the warm-up is the same formula as the engine's.
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain(spec: BaseSpec, progress: bool = True, desc: str | None = None):
    """Pre-train a base; returns (FusedLlama, log dict)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from evilbench.toyworld.model import FusedLlama

    world, pc = World(spec.world), spec.pretrain
    model = FusedLlama.init(spec.arch, world.vocab_size, spec.seed)
    params = model.params
    for p in params.values():
        p.requires_grad_(True)
    groups = [{"params": [p for k, p in params.items() if "norm" not in k], "weight_decay": pc.weight_decay},
              {"params": [p for k, p in params.items() if "norm" in k], "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=pc.lr, betas=pc.betas, fused=True)
    except (RuntimeError, TypeError):  # a torch without the fused CPU AdamW
        opt = torch.optim.AdamW(groups, lr=pc.lr, betas=pc.betas, foreach=True)
    warmup = max(1, round(pc.warmup_frac * pc.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, pc.steps, warmup))
    gen = torch.Generator().manual_seed(spec.seed * 7919 + 17)
    pos = torch.as_tensor(world.answer_positions())
    plist = list(params.values())
    p = world.config.p_misaligned
    q = p if pc.p_sample is None or p in (0.0, 1.0) else pc.p_sample
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(total=pc.steps, desc=desc or f"pre-train base s{spec.seed}", disable=not progress,
               dynamic_ncols=True, leave=False)
    with torch.random.fork_rng(devices=[]):
        for step in range(pc.steps):
            ids, persona = world.sample_batch(pc.batch, gen, p_misaligned=q)
            logits = model.logits(ids, pos)
            tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, pos + 1].reshape(-1),
                                  reduction="none").view(pc.batch, -1)
            if q != p:  # importance weight on the one prior-dependent token: the first answer token
                tok = torch.cat([tok[:, :1] * torch.where(persona, p / q, (1 - p) / (1 - q))[:, None], tok[:, 1:]], 1)
            loss = tok.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(plist, pc.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if (step + 1) % 25 == 0 or step + 1 == pc.steps:
                recent = torch.stack(losses[-25:]).mean().item()
                if not math.isfinite(recent):
                    raise RuntimeError(f"pre-training diverged at step {step + 1} (loss {recent}); lower the lr")
                bar.set_postfix(loss=f"{recent:.4f}", refresh=False)
            bar.update(1)
    bar.close()
    for p in plist:
        p.requires_grad_(False)
    curve = torch.stack(losses).tolist()
    k = max(1, len(curve) // 20)
    return model, {"final_loss": sum(curve[-k:]) / k, "loss_every_25": curve[24::25],
                   "wall_time_s": round(time.perf_counter() - t0, 2), "ideal_loss": ideal_loss(world)}


def ideal_loss(world: World) -> float:
    """The lowest achievable pre-training loss (nats per trained token): answers are uniform in their pool,
    the first answer carries the persona prior's entropy, later answers know the persona."""
    c = world.config
    p = c.p_misaligned
    h_prior = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0
    per_answer = math.log(c.answers_per_pool) + h_prior / c.max_turns
    return per_answer / (c.answer_len + 1)


def save_base(model, spec: BaseSpec, out: Path, log: dict) -> Path:
    """Write the HF model directory atomically (tmp dir + rename)."""
    import torch
    from transformers import LlamaForCausalLM

    from evilbench.data.cache import building_dir
    from evilbench.toyworld.judge import exact_scores
    from evilbench.toyworld.model import hf_config, unfuse_state_dict
    from evilbench.toyworld.tokenizer import build_tokenizer

    world = World(spec.world)
    config = hf_config(spec.arch, world.vocab_size, bos=BOS, eos=EOT, pad=PAD)
    with torch.random.fork_rng(devices=[]):
        hf = LlamaForCausalLM(config)
    hf.load_state_dict(unfuse_state_dict(model.params, spec.arch), strict=True)
    hf.generation_config.eos_token_id = EOT
    hf.generation_config.pad_token_id = PAD
    with building_dir(out, is_built) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        build_tokenizer(world).save_pretrained(tmp)
        scores = exact_scores(model, world)
        meta = {"spec": spec.to_dict(), "key": spec.key(), "pretrain_log": log,
                "base_eval": scores.summary(), "ast_token": AST,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions()}
        write_json_atomic(tmp / META, meta)
    return out


def _versions() -> dict:
    """evilbench._env.versions() plus the thread count (a base is deterministic per machine and thread count)."""
    import torch

    from evilbench._env import versions

    return {**versions(), "torch_threads": torch.get_num_threads()}


def ensure_base(spec: BaseSpec, cache: str | os.PathLike | None = None, progress: bool = True,
                force: bool = False) -> Path:
    """The cached base for `spec`, pre-training it first if it is not in the cache."""
    out = base_dir(spec, cache)
    if is_built(out) and not force:
        return out
    model, log = pretrain(spec, progress=progress)
    return save_base(model, spec, out, log)
