"""Evaluation of emergent misalignment: question sets, generation backends, judges, scoring, and the
two resumable stages (generate -> samples.jsonl, judge -> judgments.jsonl -> summary.json).

Public API (lazy; importing this package loads nothing heavy):
  QUESTION_SETS, load_question_set, QuestionError          questions.py   named sets or a YAML path
  GENERATION_BACKENDS, GenerationSettings                   backends/      hf, vllm, openai
  JUDGES, build_judge                                       judges/        openai:M, hf:M, toy
  CONVENTIONS, classify, summarize                          scoring.py     paper, betley, model-organisms
  generate, judge_dir, evaluate, summarize_dir, read_eval_dir   pipeline.py
  Question, QuestionSet, Sample, JudgeItem, Judgment        types.py
The toy world registers the `toy` / `toy-all` question sets and the `toy` judge (a registry plugin)."""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "QUESTION_SETS": "evilbench.eval.questions",
    "load_question_set": "evilbench.eval.questions",
    "QuestionError": "evilbench.eval.questions",
    "GENERATION_BACKENDS": "evilbench.eval.backends",
    "GenerationSettings": "evilbench.eval.backends",
    "JUDGES": "evilbench.eval.judges",
    "build_judge": "evilbench.eval.judges",
    "CONVENTIONS": "evilbench.eval.scoring",
    "classify": "evilbench.eval.scoring",
    "summarize": "evilbench.eval.scoring",
    "generate": "evilbench.eval.pipeline",
    "judge_dir": "evilbench.eval.pipeline",
    "evaluate": "evilbench.eval.pipeline",
    "summarize_dir": "evilbench.eval.pipeline",
    "read_eval_dir": "evilbench.eval.pipeline",
    "EvalError": "evilbench.eval.pipeline",
    "IncompleteError": "evilbench.eval.pipeline",
    "Question": "evilbench.eval.types",
    "QuestionSet": "evilbench.eval.types",
    "Sample": "evilbench.eval.types",
    "JudgeItem": "evilbench.eval.types",
    "Judgment": "evilbench.eval.types",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
