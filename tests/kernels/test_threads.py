"""The CPU kernels give the same bits on any number of threads: every matrix (NS) or pair side
(spectral) is computed by one thread, so the split changes only who computes, never how."""
from __future__ import annotations

import os

import pytest
import torch

from evilbench.kernels import newton_schulz, spectral_penalty


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


def _mixed_set(g):
    shapes = [(32, 700), (1200, 16), (8, 8), (64, 300), (1, 50), (500, 32), (32, 2048)] * 3
    dtypes = [torch.float32, torch.bfloat16, torch.float32]
    return [torch.randn(*s, generator=g).to(dtypes[i % 3]) for i, s in enumerate(shapes)]


def test_newton_schulz_bits_do_not_depend_on_thread_count(threads):
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    mats = _mixed_set(g)
    outs = []
    for n in (1, 2, 3):
        threads(n)
        outs.append(newton_schulz(mats))
    for out in outs[1:]:
        for a, b in zip(outs[0], out):
            assert torch.equal(a, b)


def test_spectral_penalty_bits_do_not_depend_on_thread_count(threads):
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    ranks = [32, 4, 1, 16, 8, 32, 2]
    A = [torch.randn(r, 100 + 37 * i, generator=g) for i, r in enumerate(ranks)]
    B = [torch.randn(60 + 53 * i, r, generator=g) for i, r in enumerate(ranks)]
    results = []
    for n in (1, 2, 3):
        threads(n)
        As = [a.clone().requires_grad_() for a in A]
        Bs = [b.clone().requires_grad_() for b in B]
        loss = spectral_penalty(As, Bs, "fro_nuclear", "mean", impl="fused")
        loss.backward()
        results.append((loss.detach(), [t.grad.clone() for t in As + Bs]))
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        for a, b in zip(results[0][1], grads):
            assert torch.equal(a, b)
