"""LoRA configuration from a model spec: targets (module suffixes; fused MoE experts through peft
`target_parameters`; multimodal checkpoints scoped to the language model), rsLoRA by default."""
from __future__ import annotations

import re
from collections.abc import Sequence

from evilbench.models.registry import ModelError, ModelSpec


def target_modules_for(spec: ModelSpec, override: Sequence[str] | None = None):
    """peft `target_modules`: a list of name suffixes, or a full-match regex when the spec scopes LoRA
    to part of the model (Gemma 3 >= 4B: the text decoder only, not the SigLIP vision tower)."""
    mods = list(override) if override else list(spec.target_modules)
    if not mods and not spec.target_parameters:
        raise ModelError(f"no LoRA target modules known for {spec.name!r} (model_type {spec.model_type!r}); "
                         "pass target modules explicitly")
    if spec.lora_scope:
        alt = "|".join(re.escape(m) for m in mods)
        return rf"(?:.*\.)?{re.escape(spec.lora_scope)}\..*\.(?:{alt})"
    return mods


def lora_config(spec: ModelSpec, *, r: int = 32, alpha: float = 64, dropout: float = 0.0, rslora: bool = True,
                target_modules: Sequence[str] | None = None, target_parameters: Sequence[str] | None = None):
    from peft import LoraConfig

    params = list(target_parameters) if target_parameters is not None else list(spec.target_parameters)
    if params and dropout:
        raise ModelError("LoRA on fused expert parameters (target_parameters) does not support dropout; use 0")
    kw = {}
    if params:
        kw["target_parameters"] = params
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora, bias="none",
                      target_modules=target_modules_for(spec, target_modules), task_type="CAUSAL_LM", **kw)


def apply_lora(model, config):
    """Wrap `model` with a fresh LoRA adapter (peft). LoRA-A init uses the global torch RNG: seed first."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():  # peft calls a transformers API that v5 deprecates; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def lora_modules(peft_model) -> list[str]:
    """Names of adapted modules (for checks and reports)."""
    return [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
