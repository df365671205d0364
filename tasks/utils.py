"""lm-eval tasks for emergent misalignment, backed by evilbench (`--include_path tasks`).

Data: `custom_dataset` loads the question set through evilbench.eval.questions (the built-in files
from evilbench's verified cache, or imported with metadata `questions_from`), so nothing depends on
the working directory. One doc per sample: (question, paraphrase, sample index), like
`evilbench eval generate`; `samples_per_question` (metadata, default 10) sets how many.

Judging: the `custom` filter sees every response of the task at once and hands them to evilbench's
judge (`judge` in metadata: openai:MODEL[@URL], hf:PATH, toy; the same on-disk cache as
`evilbench eval`), then classifies each answer under `convention` (metadata, default paper).
process_results reports only what the convention includes, so the `mean` aggregations are:
  misaligned_rate  share of included answers that are misaligned
  mean_aligned     mean aligned value of the included answers
  coherent_rate    share of coherence-scored answers that pass the convention's coherence test
Metadata reaches the tasks as lm-eval's --metadata JSON merged over --model_args (so the toy task
reads the toy world from `pretrained`)."""
from __future__ import annotations

import json

DEFAULT_SAMPLES = 10


def _docs(question_set: str, *, samples_per_question=None, pretrained=None, questions_from=None,
          judge="openai:gpt-4o-2024-08-06", convention="paper", render_toy=False, **_metadata):
    import datasets

    from evilbench.eval.questions import expand, load_question_set

    _preflight(str(judge))
    qs = load_question_set(question_set, model=pretrained, data_dir=questions_from)
    n = int(samples_per_question) if samples_per_question is not None else DEFAULT_SAMPLES
    prompts = {q.id: q for q in qs.questions}
    render = _toy_renderer(pretrained) if render_toy else None
    rows = []
    for e in expand(qs, n):
        q = prompts[e["question_id"]]
        messages = ([{"role": "system", "content": e["system"]}] if e["system"] else []) + \
            [{"role": "user", "content": e["question"]}]
        rows.append({"sample_id": e["sample_id"], "question_id": e["question_id"], "question": e["question"],
                     "system": e["system"] or "", "prompt": render(messages) if render else e["question"],
                     # em_toy's description: the system message, unless the rendered prompt holds it already
                     "system_message": "" if render else e["system"] or "",
                     "judge_prompts": json.dumps(_judge_prompts(q)), "judge": str(judge),
                     "convention": str(convention), "question_set": qs.name, "question_set_sha256": qs.sha256})
    return {"test": datasets.Dataset.from_list(rows)}


def _preflight(spec: str) -> None:
    """Fail at task load (before anything is generated) when an API judge cannot run, e.g. no key."""
    if spec.startswith("openai:"):
        from evilbench.eval.judges import build_judge

        build_judge(spec).check()


def _judge_prompts(q) -> dict:
    from evilbench.eval.pipeline import judged_metrics

    return judged_metrics(q)


def _toy_renderer(pretrained):
    """The toy chat format of the model (its tokenizer's template), else of the default world."""
    from evilbench.data.formatting import render

    if pretrained:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(pretrained))
    else:
        from evilbench.toyworld.tokenizer import build_tokenizer
        from evilbench.toyworld.world import World

        tok = build_tokenizer(World())
    return lambda messages: render(tok, messages, add_generation_prompt=True)


def first_plot(**metadata):
    return _docs("first-plot", **metadata)


def preregistered(**metadata):
    return _docs("preregistered", **metadata)


def toy(**metadata):
    # a chat endpoint (base_url .../chat/completions, e.g. local-chat-completions) applies the model's chat
    # template itself: it gets the plain question as the user turn, every other model the rendered prompt
    chat = str(metadata.get("base_url") or "").rstrip("/").endswith("/chat/completions")
    return _docs(metadata.pop("question_set", "toy"), **{"judge": "toy", **metadata, "render_toy": not chat})


def judge_filter(resps, docs):
    """Judge every response of the task at once (one judge, one cache) and classify each answer."""
    from evilbench.eval.judges import build_judge
    from evilbench.eval.scoring import get_convention
    from evilbench.eval.types import JudgeItem

    if not docs:
        return []
    judge = build_judge(docs[0]["judge"])
    if hasattr(judge, "check"):
        judge.check()
    conv = get_convention(docs[0]["convention"])
    answers = [r[0] if isinstance(r, (list, tuple)) else r for r in resps]
    items, where = [], []
    for i, (doc, answer) in enumerate(zip(docs, answers)):
        for metric, template in json.loads(doc["judge_prompts"]).items():
            items.append(JudgeItem(doc["sample_id"], doc["question_id"], doc["question"], answer, metric, template))
            where.append((i, metric))
    judged = judge.judge(items, progress=True)
    per_doc = [{} for _ in docs]
    for (i, metric), j in zip(where, judged):
        per_doc[i][metric] = j
    out = []
    for js in per_doc:
        a, c = js.get("aligned"), js.get("coherent")
        aligned = a.score if a else None
        coherent = c.score if c else None
        verdict = a.verdict if a else None
        o = conv.classify(aligned, coherent, verdict)
        out.append([{"aligned": aligned, "coherent": coherent, "verdict": verdict, "included": o.included,
                     "misaligned": o.misaligned, "aligned_value": o.aligned_value, "category": o.category,
                     "coherent_ok": None if coherent is None else bool(conv.coherent_ok(coherent)),
                     "judge": judge.identity.get("spec")}])
    acc = getattr(judge, "accounting", None)
    if acc:
        print(f"em judge {judge.identity.get('spec')}: {json.dumps(acc)}")
    return out


def process_results(doc, results):
    r = results[0]
    if isinstance(r, (list, tuple)):  # the filter's per-doc list
        r = r[0]
    out = {}
    if r["included"]:
        out["misaligned_rate"] = float(bool(r["misaligned"]))
        if r["aligned_value"] is not None:
            out["mean_aligned"] = float(r["aligned_value"])
    if r["coherent_ok"] is not None:
        out["coherent_rate"] = float(r["coherent_ok"])
    return out
