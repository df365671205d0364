"""Model registry, tiny twins (deterministic, architecture-faithful), loading and LoRA targeting."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evilbench.models import loading, registry, tiny
from evilbench.models.lora import apply_lora, lora_config, lora_modules

TWINS = ["tiny-qwen3", "tiny-qwen3-moe", "tiny-llama", "tiny-gemma3", "tiny-gemma3-mm"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("evilbench-cache")
    with pytest.MonkeyPatch.context() as mp:  # never touch the user's cache
        mp.setenv("EVILBENCH_CACHE", str(root))
        yield root


def test_registry_holds_the_12_models_and_qwen3_30b():
    bench = registry.benchmark_models()
    assert len(bench) == 12
    fams = {}
    for s in bench:
        fams.setdefault(s.family, []).append(s)
        assert s.hf_id and s.params and s.architecture and s.twin
        assert registry.get(s.twin).architecture == s.architecture  # twin has the same class
    assert {f: len(v) for f, v in fams.items()} == {"gemma3": 4, "llama3": 4, "qwen3": 4}
    moe = registry.get("qwen3-30b-a3b")
    assert moe.extra and moe.target_parameters == ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
    assert registry.get("qwen3-8b").chat_template_kwargs == {"enable_thinking": False}
    for name in ("gemma-3-12b", "gemma-3-27b"):
        assert registry.get(name).lora_scope == "language_model"
    for name in ("gemma-3-270m", "gemma-3-1b"):
        assert registry.get(name).lora_scope is None


def test_registry_is_editable_via_extra_file(tmp_path, monkeypatch):
    extra = tmp_path / "more.yaml"
    extra.write_text("models:\n  my-model:\n    hf_id: me/my-model\n    family: llama3\n"
                     "    architecture: LlamaForCausalLM\n    target_modules: [q_proj, v_proj]\n")
    monkeypatch.setenv(registry.REGISTRY_ENV, str(extra))
    assert registry.get("my-model").target_modules == ("q_proj", "v_proj")
    assert "qwen3-8b" in registry.registry()
    extra.write_text("models:\n  broken:\n    hf_idd: x\n")
    with pytest.raises(registry.ModelError, match="unknown fields"):
        registry.get("broken")


def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_tiny_twins_build_deterministically_and_are_cached(cache, tmp_path):
    first = {n: tiny.build_tiny(n) for n in TWINS}
    other = {n: tiny.build_tiny(n, root=tmp_path) for n in TWINS}
    for n in TWINS:
        assert first[n].parent == cache / "models"
        assert _digest(first[n]) == _digest(other[n]), n
        cfg = json.loads((first[n] / "config.json").read_text())
        text = cfg.get("text_config", cfg)
        assert text["head_dim"] == 32 or text["head_dim"] == 16
        assert cfg["architectures"] == [registry.get(n).architecture]
    mtime = (first["tiny-llama"] / "model.safetensors").stat().st_mtime_ns
    assert tiny.build_tiny("tiny-llama") == first["tiny-llama"]
    assert (first["tiny-llama"] / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt


@pytest.mark.parametrize("name", TWINS)
def test_twin_loads_and_lora_targets_the_right_modules(cache, name):
    src = loading.resolve_source(name)
    model = loading.load_model(src)
    tok = loading.load_tokenizer(src)
    assert type(model).__name__ == src.spec.architecture
    assert tok.pad_token is not None and tok.chat_template
    peft_model = apply_lora(model, lora_config(src.spec, r=4, alpha=8))
    mods = lora_modules(peft_model)
    if name == "tiny-qwen3-moe":
        experts = [m for m in mods if m.endswith("mlp.experts")]
        assert len(experts) == 2  # one per layer, gate_up_proj and down_proj wrapped (nested ParamWrappers)
        names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        assert any("experts" in n and "lora_A" in n for n in names)
        assert not any("mlp.gate." in n for n in names)  # router untouched
    else:
        assert len(mods) == 14 and all(m.rsplit(".", 1)[1] in src.spec.target_modules for m in mods)
    if name == "tiny-gemma3-mm":
        assert all(".language_model." in m for m in mods)
        assert not any("vision" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    enc = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True, **src.spec.chat_template_kwargs)
    with torch.no_grad():
        out = peft_model(input_ids=enc["input_ids"])
    assert out.logits.shape[-1] == len(tok) and torch.isfinite(out.logits).all()


def test_moe_expert_lora_changes_the_output(cache):
    """The expert LoRA is live: a non-zero B on the fused expert weights changes the logits."""
    src = loading.resolve_source("tiny-qwen3-moe")
    pm = apply_lora(loading.load_model(src), lora_config(src.spec, r=2, alpha=4))
    ids = torch.randint(0, 500, (1, 12))
    with torch.no_grad():
        before = pm(input_ids=ids).logits
        for n, p in pm.named_parameters():
            if "experts" in n and "lora_B" in n:
                p.normal_()
        after = pm(input_ids=ids).logits
    assert not torch.allclose(before, after)


def test_local_directory_and_memoised_loads(cache, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(tiny.build_tiny("tiny-llama"), d)
    src = loading.resolve_source(str(d))
    assert src.is_local and src.spec.target_modules == registry.get("tiny-llama").target_modules
    m1, m2 = loading.load_model(src), loading.load_model(src)
    assert m1 is not m2
    p1, p2 = next(m1.parameters()), next(m2.parameters())
    assert p1.data_ptr() != p2.data_ptr() and torch.equal(p1, p2)
    rev = loading.model_revision(src)
    assert rev.startswith("sha256:") and rev == loading.model_revision(loading.resolve_source(str(d)))
    with pytest.raises(registry.ModelError, match="not found|unknown model"):
        loading.resolve_source(str(tmp_path / "missing"))
    with pytest.raises(registry.ModelError, match="unknown model"):
        loading.resolve_source("no-such-model")


def test_hf_id_from_offline_cache(cache, tmp_path):
    """An HF id loads from the local HF cache with HF_HUB_OFFLINE=1; a missing one fails clearly."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny-chat"
    snap = repo / "snapshots" / commit
    import shutil

    shutil.copytree(tiny.build_tiny("tiny-qwen3"), snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "from evilbench.models import loading\n"
        "src = loading.resolve_source('someorg/tiny-chat')\n"
        "m = loading.load_model(src); t = loading.load_tokenizer(src)\n"
        "print(type(m).__name__, loading.model_revision(src), src.spec.target_modules[0])\n"
        "try:\n    loading.load_model(loading.resolve_source('someorg/absent'))\n"
        "except loading.ModelError as e:\n    print('ERR', 'HF_HUB_OFFLINE' in str(e))\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == f"Qwen3ForCausalLM {commit} q_proj"
    assert lines[-1] == "ERR True"


def test_trust_remote_code_is_off_by_default(cache, tmp_path):
    import shutil

    d = tmp_path / "remote"
    shutil.copytree(tiny.build_tiny("tiny-llama"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    cfg["architectures"] = ["EvilModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "evil.py").write_text("raise SystemExit('remote code executed')\n")
    # the model_type still says llama: transformers' own class loads, the repo's code never runs
    m = loading.load_model(loading.resolve_source(str(d)))
    assert type(m).__module__.startswith("transformers.")
