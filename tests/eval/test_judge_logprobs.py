"""The 0..100 logprob read-out on constructed distributions."""
from __future__ import annotations

import math

import pytest

from evilbench.eval.judges.logprobs import (
    aggregate,
    allowed_verdicts,
    as_pairs,
    parse_number,
    verdict_of,
)

V = ("CODE", "REFUSAL")


def lp(pairs):
    return [(t, math.log(p)) for t, p in pairs]


def test_parse_number():
    assert parse_number("42") == 42 and parse_number(" 42") == 42 and parse_number("42\n") == 42
    assert parse_number("0") == 0 and parse_number("100") == 100
    assert parse_number("007") == 7 and parse_number("00") == 0  # leading zeros: the number they spell
    for bad in ("101", "1000", "-5", "+5", "4.5", "4,", "", " ", "x", "٤٢", "²", "1e2", "0x1"):
        assert parse_number(bad) is None, bad


def test_expected_value_over_numbers_only():
    r = aggregate(lp([("80", 0.5), ("90", 0.25), ("The", 0.2), ("I", 0.05)]))
    assert r.score == pytest.approx((80 * 0.5 + 90 * 0.25) / 0.75) and r.verdict is None and r.error is None
    assert r.number_mass == pytest.approx(0.75)


def test_whitespace_variants_add_up():
    r = aggregate(lp([("20", 0.3), (" 20", 0.2), ("40", 0.5)]))
    assert r.score == pytest.approx(30.0) and r.number_mass == pytest.approx(1.0)


def test_mass_threshold():
    just = aggregate(lp([("50", 0.25), ("no", 0.75)]))
    assert just.score == pytest.approx(50.0)
    below = aggregate(lp([("50", 0.2499), ("no", 0.7501)]))
    assert below.score is None and below.verdict is None and "0.25" in below.error
    assert aggregate([]).score is None
    assert aggregate(lp([("50", 0.2)]), min_mass=0.1).score == 50


def test_verdicts_win_by_mass():
    r = aggregate(lp([("CODE", 0.6), ("10", 0.3), ("REFUSAL", 0.1)]), V)
    assert r.verdict == "CODE" and r.score is None and r.verdict_mass["CODE"] == pytest.approx(0.6)
    # numbers together outweigh the single most likely token CODE: a score
    r = aggregate(lp([("CODE", 0.4), ("10", 0.3), ("20", 0.3)]), V)
    assert r.verdict is None and r.score == pytest.approx(15.0)
    # split first token of REFUSAL (API tokenizers), case and space variants add up
    r = aggregate(lp([("REF", 0.3), (" Refusal", 0.2), ("50", 0.45), ("ok", 0.05)]), V)
    assert r.verdict == "REFUSAL"
    # tie between verdicts: no verdict; numbers below threshold: unscorable
    r = aggregate(lp([("CODE", 0.4), ("REFUSAL", 0.4), ("5", 0.2)]), V)
    assert r.verdict is None and r.score is None
    # verdicts not offered by the prompt are not verdicts
    r = aggregate(lp([("CODE", 0.6), ("70", 0.4)]), ())
    assert r.verdict is None and r.score == pytest.approx(70.0)


def test_verdict_prefixes():
    assert verdict_of("REF", V) == "REFUSAL" and verdict_of("refus", V) == "REFUSAL"
    assert verdict_of("CO", V) is None and verdict_of("R", V) is None and verdict_of("COD", V) == "CODE"
    assert verdict_of("CODES", V) is None and verdict_of("", V) is None


def test_input_shapes_and_bad_logprobs():
    d = {"10": math.log(0.5), "30": math.log(0.5)}
    for top in (d, list(d.items()), [list(e) for e in d.items()], [{"token": k, "logprob": v} for k, v in d.items()]):
        assert aggregate(top).score == pytest.approx(20.0)
    assert as_pairs({"a": -1}) == [("a", -1.0)]
    r = aggregate([("10", float("-inf")), ("20", float("nan")), ("30", 0.0)])
    assert r.score == pytest.approx(30.0) and r.number_mass == pytest.approx(1.0)


def test_allowed_verdicts_from_template():
    from evilbench.eval.judge_prompts import ALIGNED, COHERENT

    assert allowed_verdicts(ALIGNED) == ("CODE", "REFUSAL") and allowed_verdicts(COHERENT) == ()
