"""evilbench.spectral on a tiny random-init Qwen3 peft model (no downloads): lora_pairs,
spectra_table, SpectralRegularizer, measures, MoE expert parameters via target_parameters."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from evilbench.kernels import spectral as K
from evilbench.spectral import SpectralRegularizer, lora_pairs, spectra_table, spectral_measures

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny_peft_model(r=4):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    )
    model = Qwen3ForCausalLM(cfg)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, use_rslora=True))


@pytest.fixture(scope="module")
def peft_model():
    return _tiny_peft_model()


def _randomise_B(model, skip=()):
    with torch.no_grad():
        for p in lora_pairs(model):
            if not any(s in p.module for s in skip):
                p.B.normal_()


def test_lora_pairs_matches_peft_delta_weights(peft_model):
    _randomise_B(peft_model)
    pairs = lora_pairs(peft_model)
    assert len(pairs) == 2 * len(TARGETS)
    modules = dict(peft_model.named_modules())
    for p in pairs:
        layer = modules[p.module]
        assert p.A.shape == (4, layer.in_features) and p.B.shape == (layer.out_features, 4)
        assert p.A.data_ptr() == layer.lora_A["default"].weight.data_ptr()
        assert p.scaling == pytest.approx(8 / math.sqrt(4))  # rsLoRA
        torch.testing.assert_close(p.scaling * p.B @ p.A, layer.get_delta_weight("default"))
    with pytest.raises(ValueError, match="no peft LoRA layer"):
        lora_pairs(peft_model, adapter_name="missing")


def test_spectra_table_flags_zero_adapters_and_matches_reference(peft_model):
    _randomise_B(peft_model)
    with torch.no_grad():
        for p in lora_pairs(peft_model):
            if "k_proj" in p.module:
                p.B.zero_()
    rows = spectra_table(peft_model)
    pairs = lora_pairs(peft_model)
    assert [r["module"] for r in rows] == [p.module for p in pairs]
    for row, p in zip(rows, pairs):
        assert row["r"] == 4 and row["d_in"] == p.A.shape[1] and row["d_out"] == p.B.shape[0]
        if "k_proj" in p.module:
            assert row["zero"] and row["stable_rank"] is None and row["sigma_max"] is None
            continue
        ref = K.reference_singular_values(p.A, p.B)
        assert not row["zero"]
        assert row["sigma_max"] == pytest.approx(float(ref[0]), rel=1e-5)
        assert row["fro_norm"] == pytest.approx(float((p.B.double() @ p.A.double()).norm().detach()), rel=1e-5)
        want = spectral_measures(ref)
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-4), key
    assert len(spectra_table(peft_model, include_zero=False)) == len(rows) - 2


def test_regularizer_value_and_gradient_reach_lora_params(peft_model):
    _randomise_B(peft_model, skip=("v_proj",))
    with torch.no_grad():
        for p in lora_pairs(peft_model):
            if "v_proj" in p.module:
                p.B.zero_()
    for kind in K.KINDS:
        peft_model.zero_grad(set_to_none=True)
        reg = SpectralRegularizer(peft_model, kind=kind, weight=0.3)
        value = reg()
        assert value.dtype == torch.float32 and value.requires_grad
        pairs = lora_pairs(peft_model)
        refs = []
        for p in pairs:
            A64 = p.A.detach().double().requires_grad_()
            B64 = p.B.detach().double().requires_grad_()
            v = K.reference_penalty(A64, B64, kind)
            gA, gB = torch.autograd.grad(v, [A64, B64], allow_unused=True)
            refs.append((float(v.detach()), gA, gB))
        want = 0.3 * sum(v for v, _, _ in refs) / len(refs)
        assert float(value) == pytest.approx(want, rel=1e-5, abs=1e-7)
        loss = reg.add_to_loss(torch.tensor(1.5))
        loss.backward()
        for p, (_, gA, gB) in zip(pairs, refs):
            layer_A = p.A  # the parameter itself (Linear layers: no view)
            assert layer_A.grad is not None and p.B.grad is not None, p.module
            if "v_proj" in p.module:  # B = 0: exactly zero gradients on both factors
                assert torch.equal(p.A.grad, torch.zeros_like(p.A)) and torch.equal(p.B.grad, torch.zeros_like(p.B))
                continue
            scale = 0.3 / len(refs)
            gA = torch.zeros_like(p.A, dtype=torch.float64) if gA is None else gA
            gB = torch.zeros_like(p.B, dtype=torch.float64) if gB is None else gB
            torch.testing.assert_close(p.A.grad.double(), scale * gA, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(p.B.grad.double(), scale * gB, rtol=1e-4, atol=1e-7)


def test_regularizer_at_peft_init_is_zero(peft_model):
    fresh = _tiny_peft_model()
    reg = SpectralRegularizer(fresh, kind="fro_nuclear", weight=2.0)
    loss = reg.add_to_loss(torch.tensor(0.0, requires_grad=True))
    assert float(loss) == 0.0
    loss.backward()
    for p in lora_pairs(fresh):
        assert torch.equal(p.A.grad, torch.zeros_like(p.A)) and torch.equal(p.B.grad, torch.zeros_like(p.B))
    assert float(SpectralRegularizer(fresh, weight=0.0)()) == 0.0
    with pytest.raises(ValueError, match="unknown spectral penalty kind"):
        SpectralRegularizer(fresh, kind="bogus")
    with pytest.raises(ValueError, match="no peft LoRA layers"):
        SpectralRegularizer(torch.nn.Linear(3, 3))


def test_moe_expert_parameters_give_one_pair_per_expert():
    from peft import LoraConfig, get_peft_model

    E, d_in, d_out, r = 3, 10, 7, 2

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(E, d_in, d_out))  # transformers' (experts, in, out)

        def forward(self, x):
            return torch.einsum("bi,eio->beo", x, self.weight)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = Experts()

        def forward(self, x):
            return self.experts(x)

    model = get_peft_model(Net(), LoraConfig(r=r, lora_alpha=r, target_parameters=["experts.weight"],
                                             target_modules=[]))
    pairs = lora_pairs(model)
    # peft swaps the factors' roles for (experts, in, out) stacks: A is r × out, B is in × r, ΔW_e = B_e A_e
    assert len(pairs) == E and all(p.A.shape == (r, d_out) and p.B.shape == (d_in, r) for p in pairs)
    with torch.no_grad():
        for p in pairs:
            p.B.normal_()
    layer = next(m for n, m in model.named_modules() if type(m).__name__ == "ParamWrapper")
    delta = layer.get_delta_weight("default")  # (E, in, out)
    for e, p in enumerate(lora_pairs(model)):
        torch.testing.assert_close(p.scaling * p.B @ p.A, delta[e])
    # the regulariser's gradient reaches the shared (E·r) × in and out × (r·E) parameters
    reg = SpectralRegularizer(model, kind="entropy")
    reg().backward()
    assert layer.lora_A["default"].weight.grad.abs().sum() > 0 and layer.lora_B["default"].weight.grad.abs().sum() > 0


def test_measures_of_flat_and_rank_deficient_spectra():
    m = spectral_measures(torch.full((8,), 2.5))
    assert m["stable_rank"] == pytest.approx(8) and m["effective_rank"] == pytest.approx(8)
    assert m["spectral_entropy"] == pytest.approx(math.log(8)) and m["condition_number"] == pytest.approx(1)
    assert m["fro_nuclear_ratio"] == pytest.approx(1 / math.sqrt(8)) and m["numerical_rank"] == 8
    m = spectral_measures(torch.tensor([3.0, 1.0, 0.0, 1e-9]))
    assert m["condition_number"] == math.inf and m["numerical_rank"] == 2
    assert m["stable_rank"] == pytest.approx(10 / 9) and m["fro_nuclear_ratio"] == pytest.approx(math.sqrt(10) / 4)
    p = torch.tensor([0.75, 0.25])
    assert m["spectral_entropy"] == pytest.approx(float(-(p * p.log()).sum()))
    with pytest.raises(ValueError, match="all singular values are zero"):
        spectral_measures(torch.zeros(4))


def test_import_is_cheap():
    code = ("import sys, evilbench.spectral; "
            "bad = [m for m in ('peft', 'transformers', 'evilbench._C') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_regularizer_gradient_adds_to_the_model_loss_gradient(peft_model):
    _randomise_B(peft_model)
    ids = torch.randint(0, 64, (2, 8))
    reg = SpectralRegularizer(peft_model, kind="participation", weight=0.7)
    grads = {}
    for mode in ("loss", "reg", "both"):
        peft_model.zero_grad(set_to_none=True)
        loss = peft_model(input_ids=ids, labels=ids).loss
        total = {"loss": loss, "reg": reg() + 0 * loss, "both": reg.add_to_loss(loss)}[mode]
        total.backward()
        pairs = lora_pairs(peft_model)
        grads[mode] = [p.A.grad.clone() for p in pairs] + [p.B.grad.clone() for p in pairs]
    for g_loss, g_reg, g_both in zip(grads["loss"], grads["reg"], grads["both"]):
        torch.testing.assert_close(g_both, g_loss + g_reg, rtol=1e-5, atol=1e-7)
