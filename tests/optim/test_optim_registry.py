"""evilbench.optim registry: names, defaults, errors, and one working step each."""
from __future__ import annotations

import pytest
import torch

from evilbench import optim


def lora_params():
    return [torch.nn.Parameter(torch.randn(8, 32) * 0.1), torch.nn.Parameter(torch.zeros(48, 8))]


def test_registry_lists_the_six_optimisers_with_documented_defaults():
    assert list(optim.OPTIMIZERS) == ["sgd", "adam", "adamw", "lion", "muon", "muon-torch"]
    for name, spec in optim.OPTIMIZERS.items():
        assert spec.name == name and spec.summary
        assert set(spec.rationale) == set(spec.defaults), name  # one reason per default
        assert all(reason.strip() for reason in spec.rationale.values())
        assert optim.default_lr(name) == spec.defaults["lr"] > 0
        assert name in spec.describe()


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lion", "muon", "muon-torch"])
def test_build_and_step_reduces_a_lora_loss(name):
    if name == "lion":
        pytest.importorskip("lion_pytorch")  # a declared dependency; absent on some GPU images
    torch.manual_seed(0)
    target = torch.randn(48, 32)
    params = lora_params()
    # param groups work too; lr raised so a few steps visibly reduce the loss
    opt = optim.build(name, [{"params": params}], lr=optim.default_lr(name) * 300)
    expected = {
        "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
        "muon": optim.Muon, "muon-torch": torch.optim.Muon,
    }
    if name in expected:
        assert type(opt) is expected[name]
    else:
        Lion = pytest.importorskip("lion_pytorch").Lion

        assert isinstance(opt, Lion)
    for key, value in optim.OPTIMIZERS[name].defaults.items():
        if key != "lr":
            assert opt.param_groups[0][key] == value, key

    def loss_fn():
        return ((params[1] @ params[0] - target) ** 2).mean()

    first = loss_fn().item()
    for _ in range(10):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < first


def test_overrides_and_plain_tensor_lists():
    opt = optim.build("adamw", lora_params(), lr=3e-4, weight_decay=0.0)
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["weight_decay"] == 0.0
    gen = (p for p in lora_params())  # any iterable
    assert optim.build("sgd", gen).param_groups[0]["momentum"] == 0.9


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown optimiser 'adagrad'.*sgd, adam, adamw, lion, muon, muon-torch"):
        optim.build("adagrad", lora_params())
    with pytest.raises(ValueError, match="unknown optimiser"):
        optim.default_lr("nope")
    for name in ("muon", "muon-torch"):
        with pytest.raises(ValueError, match=r"only takes 2-D.*shape \(5,\)"):
            optim.build(name, [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(5))])
        with pytest.raises(ValueError, match=r"param group 1, parameter 0"):
            optim.build(name, [{"params": lora_params()}, {"params": [torch.nn.Parameter(torch.randn(2, 2, 2))]}])
    with pytest.raises(TypeError, match="could not build optimiser 'adam'.*betaz"):
        optim.build("adam", lora_params(), betaz=(0.9, 0.99))
    with pytest.raises(ValueError, match="empty"):
        optim.build("adam", [])
