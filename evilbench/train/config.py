"""TrainConfig: every option of a training run (the CLI flags), serialisable to/from run.json."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from evilbench.errors import UserError

# Fields that may differ when an existing run directory is resumed: they do not change the result.
OPERATIONAL = frozenset({"output", "data_dir", "resume_every_s", "log_every", "threads"})


class ConfigError(UserError, ValueError):
    """A training option is out of range or names nothing known."""


def optimizer_names() -> list[str]:
    from evilbench.optim import OPTIMIZERS

    return list(OPTIMIZERS)


def regularizer_names() -> list[str]:
    """Spectral penalty kinds, plus "none"."""
    from evilbench.kernels.spectral import KINDS

    return ["none", *KINDS]


@dataclass
class TrainConfig:
    model: str                       # registry name, HF id (local cache) or local HF-format directory
    dataset: str                     # registry name (from the cache) or path to a chat JSONL file
    output: str                      # run directory
    optimizer: str = "adamw"         # a name in evilbench.optim.OPTIMIZERS
    lr: float | None = None          # None: evilbench.optim.default_lr(optimizer)
    optimizer_kwargs: dict = field(default_factory=dict)  # extra keyword arguments for optim.build
    regularizer: str | None = None   # None / "none" or a spectral penalty kind, e.g. "fro_nuclear"
    reg_weight: float = 1.0
    batch_size: int = 2              # conversations per micro-batch
    grad_accum: int = 8              # micro-batches per optimiser step
    epochs: float = 1.0
    max_steps: int | None = None     # overrides epochs when set
    seed: int = 0                    # LoRA init, data order, dropout
    lora_r: int = 32
    lora_alpha: float = 64.0
    lora_dropout: float = 0.0
    rslora: bool = True              # scale alpha / sqrt(r) (rsLoRA) instead of alpha / r
    target_modules: list[str] | None = None     # None: from the model registry / model_type
    target_parameters: list[str] | None = None  # None: from the registry (fused MoE experts)
    lr_schedule: str = "linear"      # after warm-up: linear (decay to 0) | cosine | constant
    warmup_steps: int = 5
    warmup_ratio: float | None = None  # overrides warmup_steps when set (fraction of total steps)
    max_grad_norm: float | None = 1.0  # None or 0: no clipping (the norm is still logged)
    max_seq_len: int = 2048          # longer conversations are truncated (counted in run.json)
    max_examples: int | None = None  # use only the first N conversations
    checkpoints: int = 10            # about this many log-spaced checkpoints (the last step always)
    log_every: int = 1               # steps between metrics.jsonl lines (and NaN checks)
    dtype: str = "auto"              # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"             # auto: cuda if available, else cpu
    data_dir: str | None = None      # where to import a registry dataset from if it is not cached
    revision: str | None = None      # hub revision of the model
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    chat_template_kwargs: dict | None = None  # None: from the model registry (Qwen3: thinking off)
    resume_every_s: float = 600.0    # also save resume state this often (seconds), besides checkpoints
    threads: int | None = None       # CPU threads while training; None: 1 for small models (< 20M
                                     # parameters: threading only adds overhead), else torch's setting

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)

    def validate(self) -> None:
        """Every check that needs no model or data: run before anything heavy loads."""
        def bad(msg):
            raise ConfigError(f"invalid training config: {msg}")

        def finite(name, lo, lo_ok=True):
            v = getattr(self, name)
            if v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or (v < lo if lo_ok else v <= lo):
                bad(f"{name} must be a finite number {'>=' if lo_ok else '>'} {lo} (got {v!r})")

        finite("lr", 0, lo_ok=False)
        finite("reg_weight", 0)
        finite("epochs", 0, lo_ok=False)
        finite("lora_alpha", 0, lo_ok=False)
        finite("max_grad_norm", 0)
        finite("warmup_ratio", 0)
        finite("resume_every_s", 0, lo_ok=False)
        if self.optimizer not in optimizer_names():
            bad(f"unknown optimizer {self.optimizer!r}; known: {', '.join(optimizer_names())}")
        if (self.regularizer_kind or "none") not in regularizer_names():
            bad(f"unknown regularizer {self.regularizer!r}; known: {', '.join(regularizer_names())}")
        if not isinstance(self.optimizer_kwargs, dict):
            bad("optimizer_kwargs must be a mapping")
        if "lr" in self.optimizer_kwargs:
            bad("give the learning rate as lr, not inside optimizer_kwargs")

        if self.batch_size < 1 or self.grad_accum < 1:
            bad("batch_size and grad_accum must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps must be >= 1")
        if self.max_steps is None and not self.epochs > 0:
            bad("epochs must be > 0")
        if self.lora_r < 1:
            bad("lora_r must be >= 1")
        if self.lr is not None and not self.lr > 0:
            bad("lr must be > 0")
        if self.lr_schedule not in ("linear", "cosine", "constant"):
            bad(f"lr_schedule must be linear, cosine or constant (got {self.lr_schedule!r})")
        if self.warmup_steps < 0 or (self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1):
            bad("warmup_steps must be >= 0 and warmup_ratio in [0, 1)")
        if self.checkpoints < 1:
            bad("checkpoints must be >= 1")
        if self.log_every < 1:
            bad("log_every must be >= 1")
        if self.max_seq_len < 2:
            bad("max_seq_len must be >= 2")
        if not 0 <= self.lora_dropout < 1:
            bad("lora_dropout must be in [0, 1)")

    @property
    def regularizer_kind(self) -> str | None:
        return None if self.regularizer in (None, "", "none") else self.regularizer


def config_diff(old: dict, new: dict) -> dict[str, tuple]:
    """Result-affecting fields that differ: {field: (old, new)}."""
    import json

    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))  # tuples vs lists, as stored
    keys = (set(old) | set(new)) - OPERATIONAL
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}
