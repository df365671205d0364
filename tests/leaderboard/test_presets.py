"""The real-model presets: valid specs whose grids expand to the documented sizes, naming only
registered models, datasets and optimisers, and saying what they need."""
from __future__ import annotations

import pytest

PRESETS = {  # name -> (grid runs, calibration runs)
    "paper-sweep1": (4 * 4 * 4 * 2 * 3, 4 * 4),
    "paper-12-models": (12 * 4 * 3, 4),
    "optimisers-x-regularisers": (5 * 2 * 12 * 4 * 3, 5 * 4),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_expands_and_says_what_it_needs(name, tmp_path):
    from evilbench.data.registry import registry as datasets
    from evilbench.models.registry import benchmark_models
    from evilbench.models.registry import get as get_model_spec
    from evilbench.sweep.runner import Runner
    from evilbench.sweep.spec import load_spec, resolve_spec_path

    spec = load_spec(name)
    runner = Runner(spec, store=str(tmp_path / "s.db"), workdir=str(tmp_path / "w"))
    cells, calib = runner.cells(), runner.calibration_cells()
    assert (len(cells), len(calib)) == PRESETS[name]
    for m in {c["model"] for c in cells}:
        assert get_model_spec(m).hf_id  # a registry entry with weights to find
    if name != "paper-sweep1":
        assert {c["model"] for c in cells} == {m.name for m in benchmark_models()}
    assert {c["dataset"] for c in cells} == {"insecure", "bad-medical", "risky-financial", "extreme-sports"}
    assert set(datasets()) >= {c["dataset"] for c in cells}
    text = resolve_spec_path(name).read_text()
    req = spec.raw["requires"]
    for need in ("GPU", "weights", "judge"):
        assert need in req and need in text.split("\nname:")[0]  # the requires note and the header comment
    assert spec.eval["judge"].startswith("openai:") and spec.eval["questions"] == "first-plot"
    # one lr grid of the same size for every optimiser (the fair tuning rule)
    sizes = {len(v) for v in spec.lrs.grid.values()}
    assert spec.lrs.rule == "min-loss" and len(sizes) == 1 and set(spec.lrs.grid) == set(spec.optimizers)
