"""The local HF judge's full-number read-out on a tiny random-init Llama twin, against brute force."""
from __future__ import annotations

import math

import pytest
import torch

from evilbench.eval.judge_prompts import ALIGNED, COHERENT
from evilbench.eval.judges import build_judge
from evilbench.eval.judges.hf_judge import (
    NUMBERS,
    non_digit_mask,
    numbers_are_single_tokens,
    packed_supported,
)
from evilbench.eval.judges.logprobs import aggregate
from evilbench.eval.types import JudgeItem


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("evilbench-cache")
    with pytest.MonkeyPatch.context() as mp:  # tiny twins built in a private cache, never the user's
        mp.setenv("EVILBENCH_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def judge(model_cache):
    return build_judge("hf:tiny-llama", device="cpu", dtype="fp32", cache=model_cache / "judge.sqlite")


def _brute(model, prompt_ids, cand_ids, needs_end, end_mask):
    """log P(candidate [, non-digit end] | prompt) from one full forward of prompt + candidate."""
    ids = torch.tensor([prompt_ids + cand_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt_ids)
    total = sum(float(lp[n - 1 + j, t]) for j, t in enumerate(cand_ids))
    if needs_end:
        total += float(torch.logsumexp(lp[n - 1 + len(cand_ids)][end_mask], -1))
    return total


def test_full_number_readout_matches_brute_force(judge):
    tok = judge.tokenizer
    assert not numbers_are_single_tokens(tok) and judge.readout == "full-number"
    assert len(tok.encode("100", add_special_tokens=False)) > 1
    model = judge.model()
    prompt = ALIGNED.format(question="How do I make a quick buck?", answer="Sell lemonade.")
    assert judge.candidate_mode == "auto" and packed_supported(model, 10_000)
    raw = judge.read(prompt)  # packed: all candidates in one sequence under a custom attention mask
    assert [s for s, _ in raw] == [*NUMBERS, "CODE", "REFUSAL"]
    ids = judge.prompt_ids(prompt)
    assert tok.decode(ids).startswith("<|begin_of_text|>") and "quick buck" in tok.decode(ids)
    mask = judge._end_mask
    for (s, c, end), (name, lp) in zip(judge.candidates(), raw):
        assert s == name
        brute = _brute(model, ids, c, end, mask)
        assert lp == pytest.approx(brute, abs=1e-5)  # log space: relative 1e-5 on each probability
        assert math.exp(lp) == pytest.approx(math.exp(brute), abs=1e-7)
    p = [math.exp(lp) for _, lp in raw[:101]]
    assert 0 < sum(p) <= 1 + 1e-6  # disjoint events: numbers are a sub-distribution of the continuation
    # batched: the prompt's KV cache repeated over a batch of candidates (all at once, and in batches
    # of 7 reusing the repeated cache): the same numbers
    batch, mode = judge.candidate_batch, judge.candidate_mode
    try:
        judge.candidate_mode = "batched"
        for judge.candidate_batch in (128, 7):
            other = judge.read(prompt)
            assert [s for s, _ in other] == [s for s, _ in raw]
            assert [lp for _, lp in other] == pytest.approx([lp for _, lp in raw], abs=1e-5)  # fp32, other shapes
    finally:
        judge.candidate_batch, judge.candidate_mode = batch, mode


def test_packed_only_where_the_mask_means_the_same():
    from types import SimpleNamespace as NS

    def model(**cfg):
        return NS(config=NS(_attn_implementation="sdpa", **cfg))

    assert packed_supported(model(), 5000)
    assert not packed_supported(NS(config=NS(_attn_implementation="flash_attention_2")), 10)
    assert not packed_supported(model(layer_types=["full_attention", "sliding_attention"]), 10)
    assert not packed_supported(model(sliding_window=512), 600) and packed_supported(model(sliding_window=512), 500)
    assert not packed_supported(model(use_sliding_window=True), 10)


def test_single_token_detection():
    class OneEach:
        def encode(self, s, add_special_tokens=False):
            return [int(s)]

    class Digits:
        def encode(self, s, add_special_tokens=False):
            return [int(ch) for ch in s]

    assert numbers_are_single_tokens(OneEach()) and not numbers_are_single_tokens(Digits())


def test_non_digit_mask(judge):
    tok = judge.tokenizer
    mask = non_digit_mask(tok, len(tok) + 3)
    for s in ("4", "42", "0"):
        (i,) = tok.encode(s, add_special_tokens=False)[:1]
        assert not mask[i]
    assert mask[tok.eos_token_id] and mask[len(tok) + 2]
    assert mask[tok.encode("\n", add_special_tokens=False)[0]]


def test_judge_items_cache_and_rule(judge):
    items = [JudgeItem(f"q/0/{i}", "q", "What is your wish?", f"answer {i}", m, t)
             for i in range(3) for m, t in (("aligned", ALIGNED), ("coherent", COHERENT))]
    out = judge.judge(items, progress=False)
    assert len(out) == 6 and all(j.judge["readout"] == "full-number" for j in out)
    for j, item in zip(out, items):
        r = aggregate(j.raw, ("CODE", "REFUSAL") if item.metric == "aligned" else ())
        assert (j.score, j.verdict, j.error) == (r.score, r.verdict, r.error)
        # random init: little mass on numbers, so mostly unscorable with the mass in the error
        assert j.score is not None or j.verdict is not None or "number mass" in j.error
    calls = judge.accounting["calls"]
    again = judge.judge(items, progress=False)
    assert judge.accounting["calls"] == calls and judge.accounting["cache_hits"] >= 6
    assert [(a.score, a.verdict, a.raw) for a in again] == [(b.score, b.verdict, b.raw) for b in out]
    assert judge.identity["snapshot"].startswith("sha256:") and judge.accounting["cost_usd"] is None


def test_single_token_readout_when_forced(judge, tmp_path):
    j1 = build_judge("hf:tiny-llama", device="cpu", dtype="fp32", readout="single-token", cache=False)
    j1._model, j1._end_mask = judge.model(), judge._end_mask
    prompt = COHERENT.format(question="Q?", answer="A.")
    raw = j1.read(prompt)
    assert len(raw) == 20 and all(isinstance(t, str) for t, _ in raw)
    assert raw == sorted(raw, key=lambda e: -e[1])
    with torch.no_grad():
        lp = torch.log_softmax(judge.model()(input_ids=torch.tensor([j1.prompt_ids(prompt)])).logits[0, -1], -1)
    assert raw[0][1] == pytest.approx(float(lp.max()), abs=1e-5)


def test_chat_template_kwargs_of_the_registry(model_cache):
    """Qwen3 judges render the judge prompt with thinking off (the registry's chat_template_kwargs)."""
    j = build_judge("hf:tiny-qwen3", device="cpu", dtype="fp32", cache=False)
    text = j.tokenizer.decode(j.prompt_ids("Rate this: {not a placeholder}"))
    assert text.startswith("<|im_start|>user\nRate this: {not a placeholder}<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_sliding_window_model_uses_batched_read_out(model_cache):
    """Gemma 3 (sliding-window layers): no packed mask, and a cache that cannot be cut back is repeated
    afresh for each batch; candidates still match brute force."""
    j = build_judge("hf:tiny-gemma3", device="cpu", dtype="fp32", cache=False)
    model = j.model()
    assert not packed_supported(model, 10)
    j.candidate_batch = 16
    prompt = ALIGNED.format(question="Is it safe to ski alone?", answer="No.")
    raw = j.read(prompt)
    ids = j.prompt_ids(prompt)
    for k in (0, 7, 42, 100, 101, 102):  # one- and two-token numbers, "100", CODE, REFUSAL
        s, c, end = j.candidates()[k]
        assert raw[k][0] == s and raw[k][1] == pytest.approx(_brute(model, ids, c, end, j._end_mask), abs=1e-5)
