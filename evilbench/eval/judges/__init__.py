"""Judges, named by a spec string: "openai:MODEL", "openai:MODEL@URL", "hf:NAME_OR_PATH", "toy".

`JUDGES` maps the spec's prefix (the part before the first ":") to a factory
`factory(rest: str, *, spec: str, **opts) -> Judge`; the toy world registers "toy" from its plugin.
`build_judge(spec, **opts)` builds one; unknown prefixes raise UnknownNameError listing the known
ones. Every judge has `identity`, `judge(items, progress) -> list[Judgment]`, `check()` (preflight:
raises JudgeError before anything is generated) and `accounting` (dict)."""
from __future__ import annotations

import importlib

from evilbench.eval.judges.base import CachedJudge, JudgeError, render
from evilbench.registry import Registry


class _JudgeRegistry(Registry):
    """A plugin module that is not present (e.g. a trimmed install without the toy world) is skipped
    instead of breaking every judge lookup."""

    def _load_plugins(self) -> None:
        while self._plugins:
            name = self._plugins.pop(0)
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                if e.name is None or not name.startswith(e.name):
                    raise


JUDGES = _JudgeRegistry("judge", plugins=("evilbench.toyworld.eval_plugin",))


def split_spec(spec: str) -> tuple[str, str]:
    prefix, _, rest = spec.partition(":")
    return prefix, rest


def build_judge(spec: str, **opts):
    """The judge a spec names; `opts` go to its factory (e.g. concurrency=, timeout=, cache=)."""
    prefix, rest = split_spec(spec.strip())
    factory = JUDGES.get(prefix)
    return factory(rest, spec=spec.strip(), **opts)


@JUDGES.register("openai")
def _openai(rest: str, *, spec: str, **opts):
    from evilbench.eval.judges.openai_judge import OpenAIJudge, parse_spec

    if not rest:
        raise JudgeError("openai judge spec needs a model: openai:MODEL or openai:MODEL@URL")
    model, url = parse_spec(rest)
    return OpenAIJudge(model, url, spec=spec, **opts)


@JUDGES.register("hf")
def _hf(rest: str, *, spec: str, **opts):
    from evilbench.eval.judges.hf_judge import HFJudge

    if not rest:
        raise JudgeError("hf judge spec needs a model: hf:NAME_OR_PATH")
    return HFJudge(rest, spec=spec, **opts)


__all__ = ["JUDGES", "CachedJudge", "JudgeError", "build_judge", "render", "split_spec"]
