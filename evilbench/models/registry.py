"""The model registry (registry.yaml): the benchmark's models, their LoRA targets and template quirks,
and tiny twins. Pure data + lookup; loading lives in evilbench.models.loading."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from evilbench.errors import UserError

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")
REGISTRY_ENV = "EVILBENCH_MODEL_REGISTRY"  # extra YAML merged over the built-in registry


class ModelError(UserError, RuntimeError):
    """A model cannot be found, built or loaded."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str = ""
    hf_id: str | None = None
    revision: str | None = None
    params: float | None = None
    active_params: float | None = None
    architecture: str = ""
    model_type: str = ""
    experts: int | None = None
    experts_per_token: int | None = None
    target_modules: tuple[str, ...] = ()
    target_parameters: tuple[str, ...] = ()
    lora_scope: str | None = None
    chat_template_kwargs: dict = field(default_factory=dict)
    attn_implementation: str | None = None
    pad_token: str | None = None
    quirks: tuple[str, ...] = ()
    twin: str | None = None
    tiny: dict | None = None
    imported: dict | None = None  # recipe of `evilbench models import` (GGUF source, sha256, licence)
    judge_warning: str | None = None  # why scores from this model as a judge mean nothing (shown + recorded)
    extra: bool = False

    @property
    def is_tiny(self) -> bool:
        return self.tiny is not None

    @property
    def is_imported(self) -> bool:
        return self.imported is not None


_CACHE: dict = {}


def _raw() -> dict:
    import yaml

    extra = os.environ.get(REGISTRY_ENV)
    key = (REGISTRY_FILE.stat().st_mtime_ns, extra, extra and Path(extra).stat().st_mtime_ns)
    if _CACHE.get("key") != key:
        with open(REGISTRY_FILE) as f:
            raw = yaml.safe_load(f)
        if extra:
            with open(extra) as f:
                more = yaml.safe_load(f) or {}
            raw["models"].update(more.get("models", {}))
            raw["model_type_defaults"].update(more.get("model_type_defaults", {}))
        _CACHE.update(key=key, raw=raw)
    return _CACHE["raw"]


def _spec(name: str, entry: dict) -> ModelSpec:
    known = {f.name for f in fields(ModelSpec)}
    unknown = set(entry) - known
    if unknown:
        raise ModelError(f"model registry entry {name!r} has unknown fields {sorted(unknown)}")
    kw = dict(entry)
    for k in ("target_modules", "target_parameters", "quirks"):
        if k in kw and kw[k] is not None:
            kw[k] = tuple(kw[k])
    for k in ("params", "active_params"):
        if kw.get(k) is not None:
            kw[k] = float(kw[k])
    kw["chat_template_kwargs"] = dict(kw.get("chat_template_kwargs") or {})
    return ModelSpec(name=name, **kw)


def registry() -> dict[str, ModelSpec]:
    return {name: _spec(name, entry) for name, entry in _raw()["models"].items()}


def get(name: str) -> ModelSpec:
    entries = _raw()["models"]
    if name not in entries:
        raise ModelError(f"unknown model {name!r}; registry names: {', '.join(entries)} "
                         "(or pass a local directory or a Hugging Face id)")
    return _spec(name, entries[name])


def by_hf_id(hf_id: str) -> ModelSpec | None:
    for name, entry in _raw()["models"].items():
        if entry.get("hf_id") == hf_id:
            return _spec(name, entry)
    return None


def benchmark_models() -> list[ModelSpec]:
    """The 12 models of the benchmark (no tiny twins, no imported CPU test models, no extras)."""
    return [s for s in registry().values() if not s.is_tiny and not s.is_imported and not s.extra]


def spec_for_model_type(model_type: str, name: str, architecture: str = "") -> ModelSpec:
    """A spec for a model outside the registry, from the defaults of its config.model_type."""
    defaults = _raw()["model_type_defaults"].get(model_type)
    if defaults is None:
        return ModelSpec(name=name, model_type=model_type, architecture=architecture)
    return _spec(name, {**defaults, "model_type": model_type, "architecture": architecture})
