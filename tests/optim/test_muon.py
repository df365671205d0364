"""evilbench.optim.Muon: torch.optim.Muon semantics with an fp32 Gram-form, fused update."""
from __future__ import annotations

import copy

import pytest
import torch

from evilbench.kernels.newton_schulz_op import newton_schulz_reference
from evilbench.optim import Muon
from evilbench.optim.muon import adjust_lr_ratio
from tests.conftest import requires_cuda

SHAPES = [(32, 256), (384, 32), (1, 40), (50, 1), (24, 24), (12, 90), (300, 260)]


def reference_run(init, grads_per_step, lr, wd, momentum, nesterov, eps, fn, steps=5):
    """torch.optim.Muon's update in float64 with the float64 NS."""
    params = [w.double().clone() for w in init]
    bufs = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for p, g, b in zip(params, grads, bufs):
            g = g.double()
            b.lerp_(g, 1 - momentum)
            u = g.lerp(b, momentum) if nesterov else b
            o = newton_schulz_reference([u], steps, eps=eps, clamp_eps=True)[0]
            p.mul_(1 - lr * wd)
            p.add_(o, alpha=-lr * adjust_lr_ratio(fn, p.shape))
    return params, bufs


def run(opt_cls, init, grads_per_step, device="cpu", **kw):
    params = [torch.nn.Parameter(w.clone().to(device)) for w in init]
    opt = opt_cls(params, **kw)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone().to(device)
        opt.step()
    return [p.detach().cpu() for p in params], opt


def max_err(params, ref):
    return max((p.double() - r).abs().max().item() for p, r in zip(params, ref))


@pytest.mark.parametrize(
    "nesterov,fn,wd", [(True, None, 0.1), (False, "original", 0.0), (True, "match_rms_adamw", 0.01)]
)
def test_parity_with_torch_muon_over_several_steps(nesterov, fn, wd):
    init = [torch.randn(s) for s in SHAPES]
    grads = [[torch.randn(s) * 10 ** float(torch.empty(1).uniform_(-3, 1)) for s in SHAPES] for _ in range(4)]
    kw = dict(lr=0.02, weight_decay=wd, momentum=0.9, nesterov=nesterov, adjust_lr_fn=fn)
    ours, opt = run(Muon, init, grads, **kw)
    theirs, opt_t = run(torch.optim.Muon, init, grads, **kw)
    ref, ref_bufs = reference_run(init, grads, 0.02, wd, 0.9, nesterov, 1e-7, fn)
    err_ours, err_torch = max_err(ours, ref), max_err(theirs, ref)
    step = 0.02 * max(adjust_lr_ratio(fn, s) for s in SHAPES)  # per-step update scale
    # ours: fp32 Gram form, far below torch's bf16 error; ours vs torch: within torch's own error
    assert err_ours <= 2e-3 * step * 4, (err_ours, err_torch)
    assert err_torch > err_ours
    assert max_err(ours, [t.double() for t in theirs]) <= err_torch + err_ours + 1e-12
    for p, b in zip(opt.param_groups[0]["params"], ref_bufs):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"].double(), b, rtol=1e-5, atol=1e-6)


def test_bf16_parameters_follow_the_reference():
    init = [torch.randn(s).bfloat16() for s in SHAPES[:5]]
    grads = [[torch.randn(s).bfloat16() for s in SHAPES[:5]] for _ in range(3)]
    ours, _ = run(Muon, init, grads, lr=0.05)
    theirs, _ = run(torch.optim.Muon, init, grads, lr=0.05)
    ref, _ = reference_run(init, grads, 0.05, 0.1, 0.95, True, 1e-7, None)
    ulp = 2.0**-8 * max(p.abs().max().item() for p in ref)
    # bf16 storage: a rounding per step and the bf16 momentum buffer bound both implementations
    assert max_err(ours, ref) <= 4 * ulp
    assert max_err(ours, ref) <= max_err(theirs, ref) + ulp


def test_fallback_paths_match_the_fused_path():
    # a non-contiguous parameter and a mixed-dtype gradient go through the plain-torch path
    base = torch.randn(64, 48)
    init = [torch.randn(40, 20), torch.randn(20, 40)]
    grads = [[torch.randn(40, 20), torch.randn(20, 40)] for _ in range(3)]
    fused, _ = run(Muon, init, grads, lr=0.03)
    params = [torch.nn.Parameter(init[0].t().contiguous().t()), torch.nn.Parameter(init[1].clone())]
    assert not params[0].is_contiguous()
    opt = Muon(params, lr=0.03)
    for gs in grads:
        params[0].grad = gs[0].clone()
        params[1].grad = gs[1].clone()
        opt.step()
    torch.testing.assert_close(params[0].detach(), fused[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params[1].detach(), fused[1], rtol=1e-5, atol=1e-6)
    del base


def test_state_dict_round_trip_with_torch_muon():
    init = [torch.randn(s) for s in SHAPES[:4]]
    grads = [[torch.randn(s) for s in SHAPES[:4]] for _ in range(4)]
    _, ours = run(Muon, init, grads[:2], lr=0.02)
    sd = ours.state_dict()
    assert set(sd["state"][0]) == {"momentum_buffer"}
    _, reference = run(torch.optim.Muon, init, grads[:2], lr=0.02)
    assert sd["param_groups"][0].keys() == reference.state_dict()["param_groups"][0].keys()
    # our state -> torch.optim.Muon -> ours again is lossless: same trajectory as ours continuing
    params_a = [torch.nn.Parameter(p.detach().clone()) for p in ours.param_groups[0]["params"]]
    params_b = [torch.nn.Parameter(p.detach().clone()) for p in ours.param_groups[0]["params"]]
    a = torch.optim.Muon(params_a, lr=0.02)
    a.load_state_dict(copy.deepcopy(sd))  # state_dict() hands out references
    b = Muon(params_b, lr=0.02)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for gs in grads[2:]:
        for pa, pb, pc, g in zip(params_a, params_b, ours.param_groups[0]["params"], gs):
            pa.grad, pb.grad, pc.grad = g.clone(), g.clone(), g.clone()
        a.step()
        b.step()
        ours.step()
    for pa, pb, pc in zip(params_a, params_b, ours.param_groups[0]["params"]):
        assert torch.equal(pb, pc)
        torch.testing.assert_close(b.state[pb]["momentum_buffer"], ours.state[pc]["momentum_buffer"], rtol=0, atol=0)
        # torch continuing from our state differs only by its bf16 NS (a few % of each update)
        update = 0.02 * adjust_lr_ratio(None, pa.shape)
        torch.testing.assert_close(pa.detach(), pb.detach(), rtol=0, atol=2 * 0.1 * update)


def test_constructor_validation_matches_torch():
    p = [torch.nn.Parameter(torch.randn(4, 5))]
    for kwargs in [dict(lr=-1.0), dict(momentum=-0.1), dict(weight_decay=-1.0), dict(adjust_lr_fn="nope")]:
        with pytest.raises(ValueError) as ours:
            Muon(p, **kwargs)
        with pytest.raises(ValueError) as theirs:
            torch.optim.Muon(p, **kwargs)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="2D"):
        Muon([torch.nn.Parameter(torch.randn(3))])
    assert Muon(p).defaults == torch.optim.Muon(p).defaults
    assert isinstance(Muon(p), torch.optim.Muon)


def test_zero_and_nan_gradients_and_closure():
    p = torch.nn.Parameter(torch.randn(8, 30))
    w0 = p.detach().clone()
    opt = Muon([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros_like(p)
    loss = opt.step(lambda: torch.tensor(3.0))
    assert loss == 3.0
    torch.testing.assert_close(p.detach(), w0 * (1 - 0.1 * 0.5))  # decay only, no NaN
    p.grad = torch.full_like(p, float("nan"))
    opt.step()
    assert torch.isnan(p).all()  # as torch.optim.Muon: NaN propagates
    q = torch.nn.Parameter(torch.randn(3, 3))
    Muon([q]).step()  # no grad: nothing happens
    assert torch.isfinite(q).all()


def test_portable_kernels_give_the_same_step(monkeypatch):
    init = [torch.randn(s) for s in SHAPES[:6]]
    grads = [[torch.randn(s) for s in SHAPES[:6]] for _ in range(2)]
    fast, _ = run(Muon, init, grads, lr=0.02)
    monkeypatch.setenv("EVILBENCH_CPU_ISA", "portable")
    portable, _ = run(Muon, init, grads, lr=0.02)
    for a, b in zip(fast, portable):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_step_matches_cpu(dtype):
    init = [torch.randn(s).to(dtype) for s in SHAPES]
    grads = [[torch.randn(s).to(dtype) for s in SHAPES] for _ in range(3)]
    cpu, _ = run(Muon, init, grads, lr=0.02)
    gpu, _ = run(Muon, init, grads, device="cuda", lr=0.02)
    # bf16: a rounding per step may land on either side in each implementation
    ulp = 0.0 if dtype == torch.float32 else 4 * 2.0**-7 * max(p.abs().max().item() for p in cpu)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-4 + ulp)
