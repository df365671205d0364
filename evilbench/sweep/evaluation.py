"""Evaluation of a run's checkpoints for the sweep: one call per checkpoint into evilbench.eval's
pipeline (generate -> judge -> summary, in the evaluation directory RUN/eval/<label>/), plus the
auxiliary exact scorers the spec names (written to RUN/eval/<label>/scores.json).

`evaluate_dir` is the one place the sweep calls the evaluation pipeline (part of the core install:
the evaluation extras only add lm-eval, the OpenAI client and agreement statistics).

Scorers (SCORERS, by name):
  toyworld-exact   the toy world's exact judge (evilbench.toyworld.judge.exact_scores): in-domain and
                   held-out misalignment and coherence of the checkpoint's answer distribution, with
                   the run's dataset domain as in-domain."""
from __future__ import annotations

import json
from pathlib import Path

from evilbench.registry import Registry

SCORES_FILE = "scores.json"
SCORERS = Registry("scorer")


def question_set_identity(ev: dict, model_path: str) -> dict:
    """{"name", "sha256"} of the spec's question set for this model (None sha256 if unknown)."""
    name = ev.get("questions")
    if name is None:
        return {"name": None, "sha256": None}
    from evilbench.eval.questions import load_question_set

    return {"name": name, "sha256": load_question_set(name, model=model_path).sha256}


def judge_identity(ev: dict) -> dict | None:
    spec = ev.get("judge")
    if spec is None:
        return None
    from evilbench.eval.judges import build_judge

    return dict(build_judge(spec).identity)


class RunBackend:
    """The generation backend of one run's evaluations: built on first use (a resumed run whose answers
    are all on disk loads no model) and kept for the run's later checkpoints, whose adapters it swaps
    in (set_adapter), so the base model loads once per run instead of once per checkpoint. A backend
    without set_adapter is rebuilt for each adapter. The pipeline records `name` as the backend, as it
    would the registry name. `close()` drops the model at the end of the run."""

    def __init__(self, name: str, model: str):
        self.name, self.model = name, model
        self._backend = None

    # always differs from the pipeline's adapter path, so the pipeline calls set_adapter (with the step)
    adapter = property(lambda self: object())

    def set_adapter(self, adapter, step=None) -> None:
        if self._backend is not None and hasattr(self._backend, "set_adapter"):
            self._backend.set_adapter(adapter, step)
        else:
            from evilbench.eval.backends import GENERATION_BACKENDS

            self._backend = None
            self._backend = GENERATION_BACKENDS.get(self.name)(self.model, adapter, step=step)

    @property
    def info(self) -> dict:
        return self._backend.info

    def generate(self, requests, settings, progress=True):
        return self._backend.generate(requests, settings, progress)

    def close(self) -> None:
        self._backend = None


def evaluate_dir(model_path: str, adapter: str | None, out: Path, ev: dict, step: int,
                 backend: RunBackend | None = None) -> dict:
    """Evaluate (resuming) into `out`; returns the summary. `backend`: the run's RunBackend (else the
    spec's backend is built for this one evaluation)."""
    from evilbench.eval.pipeline import evaluate

    out.mkdir(parents=True, exist_ok=True)
    return evaluate(model_path, ev["questions"], ev["judge"], str(out), adapter=adapter, convention=ev["convention"],
                    backend=backend if backend is not None else ev["backend"], samples_per_question=ev["samples"],
                    seed=ev["seed"], max_new_tokens=ev["max_new_tokens"], temperature=ev["temperature"],
                    top_p=ev["top_p"], batch_size=ev.get("batch_size", 16), progress=False, step=step)


def read_dir(out: Path) -> tuple[list[dict], list[dict], dict]:
    """(samples, judgments, summary) of an evaluation directory."""
    from evilbench.eval.pipeline import read_eval_dir

    return read_eval_dir(out)


def run_scorers(names: list[str], model_path: str, adapter: str | None, out: Path, context: dict) -> dict:
    """Run the named scorers (cached in out/scores.json); returns {name: scores}."""
    f = out / SCORES_FILE
    have = json.loads(f.read_text()) if f.is_file() else {}
    changed = False
    for name in names:
        if name not in have:
            have[name] = SCORERS.get(name)(model_path, adapter, context)
            changed = True
    if changed:
        out.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.tmp")
        tmp.write_text(json.dumps(have, indent=1) + "\n")
        tmp.replace(f)
    return {k: have[k] for k in names}


# ------------------------------------------------------------------------------ toy-world scorer
def _toy_exact(model_path: str, adapter: str | None, context: dict) -> dict:
    import torch

    from evilbench.toyworld.base import world_of
    from evilbench.toyworld.judge import exact_scores
    from evilbench.toyworld.model import load_fused

    domain = context.get("domain")
    world = world_of(model_path)
    with torch.no_grad():
        s = exact_scores(load_fused(model_path, adapter), world).summary(domain)
    keys = ("in_domain_misalignment", "held_out_misalignment", "in_domain_coherence", "held_out_coherence")
    out = {k: s[k] for k in keys if k in s}
    out.update(misalignment=s["misalignment"], coherence=s["coherence"], in_domain=domain,
               per_domain=s["per_domain"])
    return out


SCORERS.register("toyworld-exact", _toy_exact)
