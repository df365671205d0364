"""Model registry (registry.yaml: the 12 benchmark models, Qwen3-30B-A3B, tiny twins), loading and LoRA
configuration.

Public API (lazy; importing this package loads nothing heavy):
  registry() -> {name: ModelSpec};  get(name);  benchmark_models()
  resolve_source(name | hf_id | path, revision=None) -> ModelSource(spec, location, is_local, revision)
  load_model(source, dtype="auto", device="cpu", trust_remote_code=False) / load_tokenizer(source)
  model_revision(source) -> commit (hub) or content fingerprint (local directory)
  lora_config(spec, r=32, alpha=64, dropout=0, rslora=True, target_modules=None, target_parameters=None)
  build_tiny(name) -> Path       (tiny-qwen3, tiny-qwen3-moe, tiny-llama, tiny-gemma3, tiny-gemma3-mm)
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "ModelSpec": "evilbench.models.registry",
    "ModelError": "evilbench.models.registry",
    "registry": "evilbench.models.registry",
    "get": "evilbench.models.registry",
    "benchmark_models": "evilbench.models.registry",
    "ModelSource": "evilbench.models.loading",
    "resolve_source": "evilbench.models.loading",
    "load_model": "evilbench.models.loading",
    "load_tokenizer": "evilbench.models.loading",
    "model_revision": "evilbench.models.loading",
    "lora_config": "evilbench.models.lora",
    "apply_lora": "evilbench.models.lora",
    "lora_modules": "evilbench.models.lora",
    "build_tiny": "evilbench.models.tiny",
    "tiny_dir": "evilbench.models.tiny",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
