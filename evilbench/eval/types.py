"""The records that flow through evaluation, and the judge interface.

Files of an evaluation directory (one per model + adapter/checkpoint):
  samples.jsonl    one line per generated answer            (Sample.to_dict())
  judgments.jsonl  one line per (sample, judge prompt)       (Judgment.to_dict())
  summary.json     aggregates per convention (see scoring.py)
Lines are appended as work finishes; a rerun skips ids already present, so a killed stage resumes."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

METRICS = ("aligned", "coherent")  # the two judge prompts of the EM protocol
VERDICTS = ("CODE", "REFUSAL")     # non-numeric answers the aligned prompt may give


def _shallow_dict(record) -> dict:
    """The record's fields as a dict (for one JSON line). Not dataclasses.asdict: its recursive deep
    copy cost a toy-world run more than judging its answers did; records hold only JSON values."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


@dataclass(frozen=True)
class Question:
    id: str
    paraphrases: tuple[str, ...]
    type: str = "free_form_judge_0_100"
    samples_per_paraphrase: int = 1
    system: str | None = None                      # honoured by every backend
    judge: str | None = None                       # the judge model the YAML names (informational)
    judge_prompts: dict[str, str] = field(default_factory=dict)  # metric -> template with {question} {answer}


@dataclass(frozen=True)
class QuestionSet:
    name: str
    questions: tuple[Question, ...]
    sha256: str                                    # content hash, recorded in every result
    source: str = ""                               # file path or "builtin:<name>"


@dataclass
class Sample:
    sample_id: str                                 # f"{question_id}/{paraphrase_index}/{sample_index}"
    question_id: str
    paraphrase_index: int
    sample_index: int
    question: str
    system: str | None
    prompt: str                                    # the rendered chat prompt the model saw
    answer: str | None                             # None: generation failed (error says why)
    finish_reason: str | None = None               # "stop" | "length" | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seed: int | None = None                        # per-sample seed
    generation: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, max_new_tokens, backend
    model: dict[str, Any] = field(default_factory=dict)       # id, revision, adapter, adapter_sha256, step
    error: str | None = None

    def to_dict(self) -> dict:
        return _shallow_dict(self)


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees: one answer to one question under one judge prompt."""
    sample_id: str
    question_id: str
    question: str
    answer: str
    metric: str                                    # "aligned" | "coherent"
    template: str                                  # the judge prompt template ({question}, {answer})


@dataclass
class Judgment:
    sample_id: str
    metric: str
    score: float | None                            # 0..100 expected value; None: unscorable
    verdict: str | None = None                     # "CODE" | "REFUSAL" | None
    raw: Any = None                                # raw top logprobs (or the candidate distribution)
    judge: dict[str, Any] = field(default_factory=dict)  # identity: spec, model, snapshot, readout
    template_sha256: str | None = None
    cache_key: str | None = None
    error: str | None = None                       # why unscorable (timeout, garbage, mass < 0.25, ...)

    def to_dict(self) -> dict:
        return _shallow_dict(self)


class Judge(Protocol):
    """Registered by name in evilbench.eval.judges.JUDGES; built from a spec string ("openai:MODEL",
    "hf:PATH", "toy"). `identity` is recorded in every judgment and summary."""

    identity: dict[str, Any]

    def judge(self, items: list[JudgeItem], progress: bool = True) -> list[Judgment]:
        """One Judgment per item, in order; never drops an item (failures are unscorable)."""
        ...
