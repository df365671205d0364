"""What every cached judge shares: rendering the judge prompt, the cache round trip, turning a raw
read-out into a Judgment, and the accounting.

A subclass defines `identity` (recorded in every judgment), `key_identity` (the part of the identity
known before a call, used in cache keys), `decoding` (decoding parameters, also in the key),
`messages(prompt)` / `cache_prompt(prompt)` as needed, and `_run(misses)` which scores the items that
were not cached and calls `self._finish(key, result)` for each, where result is
{"raw": [[token, logprob], ...], "snapshot": str|None, "usage": {...}} or {"error": str}."""
from __future__ import annotations

import threading
from typing import Any

from evilbench.eval.judge_prompts import template_sha256
from evilbench.eval.judges.accounting import Accounting
from evilbench.eval.judges.cache import cache_key, open_cache
from evilbench.eval.judges.logprobs import MIN_NUMBER_MASS, aggregate, allowed_verdicts
from evilbench.eval.types import JudgeItem, Judgment


class JudgeError(RuntimeError):
    """A judge cannot run at all (missing API key, bad spec, unloadable model)."""


def render(template: str, question: str, answer: str) -> str:
    """The judge prompt: `template` with {question} and {answer} filled (str.format, so a literal
    brace in a template is written {{ }})."""
    try:
        return template.format(question=question, answer=answer)
    except (KeyError, IndexError, ValueError) as e:
        raise JudgeError(f"judge prompt template must use only {{question}} and {{answer}} placeholders "
                         f"(literal braces doubled): {type(e).__name__}: {e}") from None


class CachedJudge:
    spec: str
    readout: str
    identity: dict[str, Any]

    def __init__(self, spec: str, *, cache=None, min_mass: float = MIN_NUMBER_MASS):
        self.spec = spec
        self.cache = open_cache(cache)
        self.min_mass = min_mass
        self._accounting = Accounting(priced=False)
        self._results: dict[str, dict] = {}
        self._judge_lock = threading.Lock()

    # --- subclass hooks -------------------------------------------------------------------------
    @property
    def key_identity(self) -> dict:
        raise NotImplementedError

    @property
    def decoding(self) -> dict:
        raise NotImplementedError

    def _run(self, misses: list[tuple[str, str, JudgeItem]], progress: bool) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Preflight: raise JudgeError when the judge cannot run (called before anything is generated)."""

    def close(self) -> None:
        """Release connections / threads (a judge can be used as a context manager)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- shared ---------------------------------------------------------------------------------
    @property
    def accounting(self) -> dict:
        """Counts over every judge() call of this judge object (see accounting.py)."""
        return self._accounting.as_dict()

    def _finish(self, key: str, result: dict) -> None:
        self._results[key] = result
        if "error" not in result and self.cache is not None:
            self.cache.put(key, result)

    def key_for(self, item: JudgeItem) -> tuple[str, str, str]:
        """(rendered prompt, template sha256, cache key) of an item."""
        prompt = render(item.template, item.question, item.answer)
        tsha = template_sha256(item.template)
        return prompt, tsha, cache_key(self.key_identity, tsha, prompt, self.decoding)

    def judge(self, items: list[JudgeItem], progress: bool = True) -> list[Judgment]:
        """One Judgment per item, in order; failures are unscorable Judgments with `error` set.
        Calls on one judge object from several threads run one after another."""
        with self._judge_lock:
            return self._judge(items, progress)

    def _judge(self, items: list[JudgeItem], progress: bool) -> list[Judgment]:
        self.check()
        prepared = [(item, *self.key_for(item)) for item in items]
        keys = [k for *_, k in prepared]
        hits = self.cache.get_many(list(dict.fromkeys(keys))) if self.cache is not None else {}
        self._results = dict(hits)
        misses: dict[str, tuple[str, str, JudgeItem]] = {}
        for item, prompt, _tsha, key in prepared:
            if key not in self._results and key not in misses:
                misses[key] = (key, prompt, item)
        self._accounting.add(cache_hits=len(items) - len(misses))
        if misses:
            self._run(list(misses.values()), progress)
        out = []
        for item, _prompt, tsha, key in prepared:
            result = self._results.get(key) or {"error": "no result (internal error)"}
            out.append(self._judgment(item, tsha, key, result))
        self._results = {}
        return out

    def _judgment(self, item: JudgeItem, tsha: str, key: str, result: dict) -> Judgment:
        ident = {**self.identity, "snapshot": result.get("snapshot", self.identity.get("snapshot"))}
        if "error" in result:
            return Judgment(item.sample_id, item.metric, None, None, None, ident, tsha, key, result["error"])
        r = aggregate(result["raw"], allowed_verdicts(item.template), self.min_mass)
        return Judgment(item.sample_id, item.metric, r.score, r.verdict, result["raw"], ident, tsha, key, r.error)
