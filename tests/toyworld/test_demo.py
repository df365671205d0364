"""`evilbench toyworld demo` is the toy sweep preset plus its analysis: end to end on the small world
through a tiny spec (one base, two optimisers, a regulariser, an aligned control), and a rerun trains
nothing."""
from __future__ import annotations

import json

import yaml


def _spec(tmp_path, spec) -> str:
    w = spec.world
    d = {"name": "tiny-demo", "models": ["toyworld:base-0"], "datasets": ["toyworld:code-misaligned"],
         "optimizers": ["adam", "sgd"], "regularizers": ["none", "fro_nuclear:1"], "batch_sizes": [16], "seeds": [0],
         "lrs": {"adam": [3e-3], "sgd": [0.3]},
         "train": {"max_steps": 12, "grad_accum": 1, "lora_r": 4, "lora_alpha": 8.0, "warmup_steps": 2,
                   "checkpoints": 3, "max_seq_len": 64, "log_every": 4, "device": "cpu", "dtype": "fp32"},
         "eval": {"questions": "toy", "judge": "toy", "samples": 2, "checkpoints": "all", "base": True,
                  "scores": ["toyworld-exact"], "batch_size": 256},
         "extra": [{"datasets": ["toyworld:code-aligned"], "optimizers": ["adam"], "regularizers": ["none"]}],
         "toyworld": {"examples": 64, "data_seed": 0, "world": w.to_dict(), "arch": spec.arch.to_dict(),
                      "pretrain": spec.pretrain.to_dict()},
         "executor": {"kind": "local", "workers": 1}}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("adapter_model.safetensors")}


def test_demo_alias_end_to_end_and_resume(small_base, small_spec, toy_cache, tmp_path, engine):
    from evilbench.store.db import Store
    from evilbench.toyworld.demo import run_demo

    out = tmp_path / "demo"
    spec = _spec(tmp_path, small_spec)
    assert run_demo(out, spec=spec, jobs=1, progress=False, native_math=True, log=lambda *a, **k: None) == 0
    st = Store(out / "results.db", readonly=True)
    runs = st.runs_frame()
    assert len(runs) == 5 and set(runs.status) == {"finished"}
    assert {str(m) for m in runs.model} == {"toyworld:base-0"}
    assert str(small_base) in {json.loads(c)["model"] for (c,) in st._con.execute("SELECT config_json FROM configs")}
    table = (out / "table.md").read_text()
    assert "| sgd | fro_nuclear | code-misaligned |" in table and "| adam | none | code-aligned |" in table
    assert "held-out @fit" in table and "Spectra of the final adapters" in table
    for name in ("trajectories.png", "heldout_vs_indomain.png", "loss_vs_em.png", "spectral_flatness.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = {(c["optimizer"], c["regularizer"], c["dataset"]): c
             for c in json.loads((out / "analysis.json").read_text())["cells"]}
    ds = "toyworld:code-misaligned"
    reg, plain = cells[("sgd", "fro_nuclear", ds)], cells[("sgd", "none", ds)]
    assert reg["spectra_fro_nuclear_ratio"]["mean"] < plain["spectra_fro_nuclear_ratio"]["mean"]  # the penalty flattens
    page = (out / "leaderboard" / "index.html").read_text()
    assert "<table" in page and "sgd" in page and "fro_nuclear" in page  # the leaderboard page of the same store
    before = _mtimes(out)
    assert run_demo(out, spec=spec, jobs=1, progress=False, native_math=True, log=lambda *a, **k: None) == 0
    assert _mtimes(out) == before  # nothing trained again
    assert (out / "table.md").read_text() == table
