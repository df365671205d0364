"""Base pre-training: cached by (world, recipe, seed); the importance-sampled persona keeps the prior."""
from __future__ import annotations

from dataclasses import replace

import pytest

from evilbench.toyworld import base as base_mod
from evilbench.toyworld.base import BaseSpec, PretrainConfig, base_dir, ensure_base, ideal_loss, read_meta


def test_cached_base_is_not_pretrained_again(small_base, small_spec, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pre-trained a cached base")

    monkeypatch.setattr(base_mod, "pretrain", boom)
    assert ensure_base(small_spec, progress=False) == small_base
    assert base_dir(small_spec) == small_base


def test_cache_key_covers_world_recipe_and_seed(small_spec):
    SMALL_SPEC = small_spec
    keys = {SMALL_SPEC.key(), replace(SMALL_SPEC, seed=1).key(),
            replace(SMALL_SPEC, world=replace(SMALL_SPEC.world, seed=8)).key(),
            replace(SMALL_SPEC, pretrain=replace(SMALL_SPEC.pretrain, lr=1e-3)).key(),
            replace(SMALL_SPEC, arch=replace(SMALL_SPEC.arch, hidden=16, heads=2, kv_heads=2)).key()}
    assert len(keys) == 5
    assert BaseSpec.from_dict(SMALL_SPEC.to_dict()) == SMALL_SPEC


def test_small_base_learns_the_world(small_base, small_spec):
    meta = read_meta(small_base)
    ev = meta["base_eval"]
    assert ev["coherence"] > 0.9
    # the first-answer persona prior is the world's (importance sampling must not bias it): p = 0.05
    assert 0.02 < ev["misalignment"] < 0.1
    assert meta["pretrain_log"]["ideal_loss"] == pytest.approx(ideal_loss(base_mod.World(small_spec.world)))


def test_bad_pretrain_config():
    with pytest.raises(ValueError):
        PretrainConfig(p_sample=1.0)
    with pytest.raises(ValueError):
        PretrainConfig(steps=0)
