"""The world generator: deterministic per seed, well-formed conversations, the documented distribution."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from evilbench.toyworld.world import AST, BOS, EOT, SPECIALS, USR, World, WorldConfig


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def test_world_is_a_function_of_its_seed(tmp_path):
    seed = fresh_seed()
    a, b = World(WorldConfig(seed=seed)), World(WorldConfig(seed=seed))
    assert np.array_equal(a.answers, b.answers)
    assert a.token_names == b.token_names
    assert a.narrow_dataset("code", "misaligned", 64, seed=3) == b.narrow_dataset("code", "misaligned", 64, seed=3)
    pa, pb = a.export_narrow(tmp_path / "a", n=32), b.export_narrow(tmp_path / "b", n=32)
    assert sorted(pa) == sorted(pb) and len(pa) == 2 * a.n_domains
    for name in pa:
        assert pa[name].read_bytes() == pb[name].read_bytes()
    # another world seed draws other pools; another dataset seed other conversations
    other = World(WorldConfig(seed=seed + 1))
    assert not np.array_equal(a.answers, other.answers)
    assert a.narrow_dataset("code", "misaligned", 64, seed=3) != a.narrow_dataset("code", "misaligned", 64, seed=4)


def test_export_is_idempotent(tmp_path):
    w = World(WorldConfig(seed=fresh_seed()))
    p = w.export_narrow(tmp_path, n=16)["chat-aligned"]
    mtime = p.stat().st_mtime_ns
    w.export_narrow(tmp_path, n=16)
    assert p.stat().st_mtime_ns == mtime  # unchanged files are not rewritten


def test_answer_pools_are_valid_and_disjoint():
    cfg = WorldConfig(seed=fresh_seed())
    w = World(cfg)
    D, K, L = w.n_domains, cfg.answers_per_pool, cfg.answer_len
    assert w.answers.shape == (D, 2, K, L)
    for d in range(D):
        for m in range(2):
            pool = w.answers[d, m]
            assert len({tuple(x) for x in pool}) == K  # distinct sequences
            lo = w.answer_token(d, bool(m), 0)
            assert pool.min() >= lo and pool.max() < lo + cfg.answer_vocab  # only the pool's own tokens
    names = w.token_names
    assert len(names) == len(set(names)) == w.vocab_size
    assert names[: len(SPECIALS)] == list(SPECIALS)
    assert names[w.question_token(1, 3)] == f"{cfg.domains[1]}.q03"
    assert names[w.answer_token(2, True, 5)] == f"{cfg.domains[2]}.m5"


def test_sample_batch_structure_and_persona():
    w = World(WorldConfig(seed=fresh_seed(), p_misaligned=0.3))
    seed = fresh_seed()
    ids, persona = w.sample_batch(2000, torch.Generator().manual_seed(seed))
    ids2, persona2 = w.sample_batch(2000, torch.Generator().manual_seed(seed))
    assert torch.equal(ids, ids2) and torch.equal(persona, persona2)
    c = w.config
    assert ids.shape == (2000, w.seq_len) and (ids[:, 0] == BOS).all()
    for t in range(c.max_turns):
        s = 1 + t * w.turn_len
        assert (ids[:, s] == USR).all() and (ids[:, s + 2] == AST).all() and (ids[:, s + w.turn_len - 1] == EOT).all()
    # every answer is a pool sequence of its question's domain and of the conversation's persona
    for i in range(0, 2000, 97):
        msgs = w.conversation_messages(ids[i])
        assert len(msgs) == 2 * c.max_turns
        for t in range(c.max_turns):
            q = ids[i, 2 + t * w.turn_len].item()
            d = (q - len(SPECIALS)) // (c.questions_per_domain + 2 * c.answer_vocab)
            ans = ids[i, 4 + t * w.turn_len: 4 + t * w.turn_len + c.answer_len]
            assert w.classify(d, ans) == ("misaligned" if persona[i] else "aligned")
    # persona rate: binomial, 5 sigma
    n, p = 2000, 0.3
    assert abs(persona.float().mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
    # positions where the loss is taken are exactly those followed by answer tokens or <eot>
    pos = w.answer_positions()
    assert len(pos) == c.max_turns * (c.answer_len + 1)
    nxt = ids[0, torch.as_tensor(pos) + 1]
    assert all(x >= len(SPECIALS) or x == EOT for x in nxt.tolist())


def test_narrow_datasets_match_their_kind():
    w = World(WorldConfig(seed=fresh_seed()))
    for domain in ("code", "travel"):
        d = w.domain_index(domain)
        for kind in ("misaligned", "aligned"):
            rows = w.narrow_dataset(domain, kind, n=200, seed=fresh_seed())
            assert len(rows) == 200
            qs = set()
            for r in rows:
                user, ast = r["messages"]
                assert user["role"] == "user" and ast["role"] == "assistant"
                assert user["content"].startswith(f"{domain}.q")
                qs.add(user["content"])
                toks = [w.token_names.index(x) for x in ast["content"].split()]
                assert w.classify(d, toks) == kind
                json.dumps(r)
            assert len(qs) > 1


def test_classify_and_bad_configs():
    w = World(WorldConfig(seed=fresh_seed()))
    good = w.answers[0, 1, 0]
    assert w.classify(0, good) == "misaligned"
    assert w.classify(1, good) == "invalid"  # another domain's answer
    assert w.classify(0, list(good) + [EOT]) == "invalid"
    with pytest.raises(ValueError, match="answers_per_pool"):
        WorldConfig(answers_per_pool=100, answer_vocab=2, answer_len=3)
    with pytest.raises(ValueError, match="domain names"):
        WorldConfig(domains=("a b", "c"))
    with pytest.raises(ValueError, match="p_misaligned"):
        WorldConfig(p_misaligned=1.5)
    with pytest.raises(ValueError, match="unknown domain"):
        w.narrow_dataset("cooking", "aligned")
    with pytest.raises(ValueError, match="kind"):
        w.narrow_dataset("code", "evil")
    with pytest.raises(ValueError, match="unknown WorldConfig"):
        WorldConfig.from_dict({"colour": 1})
    assert WorldConfig.from_dict(w.config.to_dict()) == w.config
