"""Judge accounting and the editable price table."""
from __future__ import annotations

import pytest

from evilbench.eval.judges.accounting import (
    PRICES_FILE,
    Accounting,
    load_prices,
    price_for,
)


def test_packaged_table_loads_and_prices_known_models():
    prices = load_prices()
    assert prices["gpt-4o-2024-08-06"] == {"input": 2.5, "output": 10.0}
    assert PRICES_FILE.name == "prices.yaml"


def test_lookup_by_model_then_snapshot_unknown_is_null():
    prices = {"gpt-x": {"input": 1.0, "output": 2.0}, "gpt-x-2026": {"input": 3.0, "output": 4.0}}
    assert price_for("gpt-x", "gpt-x-2026", prices) == {"input": 1.0, "output": 2.0}
    assert price_for("alias", "gpt-x-2026", prices) == {"input": 3.0, "output": 4.0}
    assert price_for("nope", None, prices) is None
    acc = Accounting(model="nope", prices=prices)
    acc.add(calls=3, prompt_tokens=1000, completion_tokens=3)
    assert acc.as_dict() == {"calls": 3, "cache_hits": 0, "retries": 0, "failures": 0, "prompt_tokens": 1000,
                             "completion_tokens": 3, "cost_usd": None}
    acc.model = "gpt-x"
    assert acc.cost_usd() == pytest.approx((1000 * 1.0 + 3 * 2.0) / 1e6)
    assert Accounting(model="gpt-x", prices=prices, priced=False).cost_usd() is None  # local judges
    with pytest.raises(KeyError):
        acc.add(tokens=1)


def test_price_file_from_environment_and_validation(tmp_path, monkeypatch):
    f = tmp_path / "p.yaml"
    f.write_text("my-judge: {input: 0.5, output: 1.5}\n")
    monkeypatch.setenv("EVILBENCH_JUDGE_PRICES", str(f))
    assert load_prices() == {"my-judge": {"input": 0.5, "output": 1.5}}
    f.write_text("my-judge: {input: 0.5}\n")
    with pytest.raises(ValueError, match="needs 'input' and 'output'"):
        load_prices()
    f.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_prices()
