"""The toy EM world: a weight-free testbed where emergent misalignment appears on a CPU in minutes.

A synthetic chat world (integer tokens, six domains, a latent persona shared across turns), tiny
Llama base models pre-trained on it, narrow datasets for every domain, an exact judge, per-run metrics
over the training trajectory, a written learning-rate rule per optimiser, and the demo that runs
bases x seeds x optimisers x regularisers through the training engine. See docs/toyworld.md.

Public API (lazy; importing this package loads nothing heavy):
  WorldConfig, World                 world.py     the generator (seeded); narrow_dataset / export_narrow
  build_tokenizer(world)             tokenizer.py WordLevel tokenizer + chat template (HF fast tokenizer)
  ArchConfig, FusedLlama, load_fused model.py     the Llama forward used for pre-training and scoring
  PretrainConfig, BaseSpec, ensure_base, world_of, toyworld_cache   base.py   cached base models
  exact_scores, sampled_scores, Scores              judge.py     the exact judge (mass / sampled)
  evaluate_checkpoints, run_metrics   metrics.py
  LR_GRIDS, choose_lr                lr_rule.py   the learning-rate rule
  run_demo, demo_commands            demo.py      `evilbench toyworld demo`: an alias of the toy sweep preset
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "WorldConfig": "evilbench.toyworld.world",
    "World": "evilbench.toyworld.world",
    "build_tokenizer": "evilbench.toyworld.tokenizer",
    "ArchConfig": "evilbench.toyworld.model",
    "FusedLlama": "evilbench.toyworld.model",
    "load_fused": "evilbench.toyworld.model",
    "merge_lora": "evilbench.toyworld.model",
    "PretrainConfig": "evilbench.toyworld.base",
    "BaseSpec": "evilbench.toyworld.base",
    "ensure_base": "evilbench.toyworld.base",
    "world_of": "evilbench.toyworld.base",
    "toyworld_cache": "evilbench.toyworld.base",
    "exact_scores": "evilbench.toyworld.judge",
    "sampled_scores": "evilbench.toyworld.judge",
    "Scores": "evilbench.toyworld.judge",
    "evaluate_checkpoints": "evilbench.toyworld.metrics",
    "run_metrics": "evilbench.toyworld.metrics",
    "LR_GRIDS": "evilbench.toyworld.lr_rule",
    "choose_lr": "evilbench.toyworld.lr_rule",
    "run_demo": "evilbench.toyworld.demo",
    "demo_commands": "evilbench.toyworld.demo",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
