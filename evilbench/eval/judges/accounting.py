"""Per-run accounting of a judge: calls (requests sent, retries included), cache hits, retries,
failures (items left unscorable by a transport or response error), prompt / completion tokens of the
calls made in this run, and their cost from the editable price table prices.yaml (null when the model
is not listed). Cached items cost nothing and add no tokens."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PRICES_FILE = Path(__file__).with_name("prices.yaml")
FIELDS = ("calls", "cache_hits", "retries", "failures", "prompt_tokens", "completion_tokens")


def load_prices(path: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
    """The price table: EVILBENCH_JUDGE_PRICES or the packaged prices.yaml."""
    path = Path(path or os.environ.get("EVILBENCH_JUDGE_PRICES") or PRICES_FILE)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping model -> {{input, output}} (USD per million tokens)")  # noqa: TRY004
    for name, p in data.items():
        if not isinstance(p, dict) or not {"input", "output"} <= set(p):
            raise ValueError(f"{path}: entry {name!r} needs 'input' and 'output' (USD per million tokens)")
    return {str(k): {"input": float(v["input"]), "output": float(v["output"])} for k, v in data.items()}


def price_for(model: str | None, snapshot: str | None = None, prices: dict | None = None) -> dict | None:
    prices = load_prices() if prices is None else prices
    for name in (model, snapshot):
        if name and name in prices:
            return prices[name]
    return None


@dataclass
class Accounting:
    model: str | None = None
    snapshot: str | None = None
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    priced: bool = True  # False for local judges: no price applies (cost_usd stays null)
    prices: dict | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                if k not in FIELDS:
                    raise KeyError(k)
                setattr(self, k, getattr(self, k) + int(v or 0))

    def cost_usd(self) -> float | None:
        if not self.priced:
            return None
        p = price_for(self.model, self.snapshot, self.prices)
        if p is None:
            return None
        return round((self.prompt_tokens * p["input"] + self.completion_tokens * p["output"]) / 1e6, 8)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in FIELDS}
        d["cost_usd"] = self.cost_usd()
        return d

    def reset(self) -> None:
        with self._lock:
            for k in FIELDS:
                setattr(self, k, 0)
