"""The two resumable stages of an evaluation, and the evaluation directory they write.

  generate  -> samples.jsonl    one types.Sample per answer
  judge     -> judgments.jsonl  one types.Judgment per (sample, judge prompt, judge); several judges
                                may share the file, each line carries its judge identity
            -> summary.json     scoring.summarize for the last judge + convention, with provenance
  eval.json                     what the samples are answers of: question set {name, sha256}, model,
                                adapter, generation settings (a rerun with other settings is refused)
  questions.json                the question set as generated (the judge stage needs nothing else)

Both stages append finished work batch by batch (one write + fsync per batch). A rerun reads what is
there, drops a partial last line (a kill -9 mid-write), skips finished ids and does the rest; answers
do not depend on batching (per-sample seeds), so a killed and resumed run writes the same records as
an uninterrupted one. Samples that failed (answer None) and judgments that got no response at all
(no raw read-out) are retried by a rerun; readers keep the last line per id. Re-judging with another
judge never regenerates."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evilbench._io import DirLock
from evilbench.errors import UserError
from evilbench.eval.types import METRICS, JudgeItem, Question, QuestionSet, Sample

SAMPLES = "samples.jsonl"
JUDGMENTS = "judgments.jsonl"
SUMMARY = "summary.json"
MANIFEST = "eval.json"
QUESTIONS = "questions.json"
SCHEMA_VERSION = 1
JUDGE_CHUNK = 256  # judge items per judge() call (and per append + fsync)


class EvalError(UserError):
    """An evaluation cannot proceed (mismatching directory, unknown set, failed endpoint, ...)."""


class IncompleteError(EvalError):
    """Some samples could not be generated or judged; finished work is kept. `counts` says which."""

    def __init__(self, message: str, counts: dict):
        super().__init__(message)
        self.counts = counts


# --------------------------------------------------------------------------------------- JSONL helpers
def repair_jsonl(path: Path) -> None:
    """Drop a partial or unparsable last line (what a kill during a write leaves)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data:
        return
    end = len(data)
    if not data.endswith(b"\n"):
        end = data.rfind(b"\n") + 1
    else:
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[start:])
        except ValueError:
            end = start
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """All records; a partial last line is ignored, a corrupt line elsewhere is an error (file:line)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines):  # the unterminated last line of a killed write
                break
            raise EvalError(f"{path}:{i}: corrupt line (not JSON)") from None
    return rows


def append_jsonl(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class _DirLock(DirLock):
    """An exclusive lock on an evaluation directory for one stage: two processes never append to the
    same files (a second one fails at once with a clear error)."""

    def __init__(self, output: Path):
        super().__init__(output, lambda d: EvalError(f"{d} is in use by another evaluation process"))


def _write_json(path: Path, obj) -> None:
    from evilbench.train.rundir import write_json_atomic

    write_json_atomic(path, obj)


def latest_by(rows: list[dict], key) -> dict:
    out = {}
    for r in rows:
        out[key(r)] = r
    return out


# --------------------------------------------------------------------------------------- readers
def read_samples(output: str | os.PathLike) -> list[dict]:
    """The last record per sample_id, in file order of first appearance."""
    return list(latest_by(read_jsonl(Path(output) / SAMPLES), lambda r: r["sample_id"]).values())


def judge_key(identity: dict) -> str:
    return identity.get("spec") or json.dumps(identity, sort_keys=True)


def read_judgments(output: str | os.PathLike, judge: str | None = None) -> list[dict]:
    """The last judgment per (sample, metric, judge); only judge spec `judge` if given."""
    rows = read_jsonl(Path(output) / JUDGMENTS)
    if judge is not None:
        rows = [r for r in rows if judge_key(r.get("judge") or {}) == judge]
    return list(latest_by(rows, lambda r: (r["sample_id"], r["metric"], judge_key(r.get("judge") or {}))).values())


def read_eval_dir(output: str | os.PathLike) -> tuple[list[dict], list[dict], dict]:
    """(samples, judgments, summary) of an evaluation directory."""
    output = Path(output)
    if not (output / MANIFEST).is_file() and not (output / SAMPLES).is_file():
        raise EvalError(f"{output} is not an evaluation directory (no {MANIFEST} / {SAMPLES})")
    summary = json.loads((output / SUMMARY).read_text()) if (output / SUMMARY).is_file() else {}
    return read_samples(output), read_judgments(output), summary


def read_question_file(output: Path) -> QuestionSet:
    d = json.loads((Path(output) / QUESTIONS).read_text())
    qs = tuple(Question(**{**q, "paraphrases": tuple(q["paraphrases"])}) for q in d["questions"])
    return QuestionSet(d["name"], qs, d["sha256"], d.get("source", ""))


# --------------------------------------------------------------------------------------- generate
def _question_set(questions, model, data_dir) -> QuestionSet:
    from evilbench.eval.questions import load_question_set

    if isinstance(questions, QuestionSet):
        return questions
    return load_question_set(questions, model=model, data_dir=data_dir)


def _adapter_info(adapter, step) -> dict:
    from evilbench.eval.backends.hf import adapter_sha256

    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise EvalError(f"adapter directory {adapter} has no adapter_config.json")
    return {"path": None if adapter is None else str(Path(adapter).resolve()),
            "sha256": adapter_sha256(adapter), "step": step}


def _check_manifest(output: Path, manifest: dict, overwrite: bool) -> None:
    path = output / MANIFEST
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        keys = ("question_set", "model", "adapter", "generation", "samples_per_question", "backend")
        diff = [k for k in keys if old.get(k) != manifest.get(k)]
        if diff:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {manifest.get(k)!r}" for k in diff)
            raise EvalError(f"{output} holds an evaluation with other {', '.join(diff)} ({detail}); "
                            "use another --output, or --overwrite to discard it")
    if overwrite:
        for name in (SAMPLES, JUDGMENTS, SUMMARY, MANIFEST, QUESTIONS):
            (output / name).unlink(missing_ok=True)


def generate(model, questions, output, *, adapter=None, samples_per_question: int | None = None,
             backend: Any = "hf", seed: int = 0, max_new_tokens: int = 600, temperature: float = 1.0,
             top_p: float = 1.0, batch_size: int = 16, progress: bool = True, step: int | None = None,
             backend_opts: dict | None = None, data_dir=None, overwrite: bool = False) -> Path:
    """Generate every missing answer of `questions` into OUTPUT/samples.jsonl and return its path.

    `backend` is a registry name ("hf", "vllm", "openai") or a built backend (reused across adapters:
    its adapter is switched with set_adapter). Raises IncompleteError (after writing everything that
    finished) when some samples could not be generated."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with _DirLock(output):
        return _generate(model, questions, output, adapter=adapter, samples_per_question=samples_per_question,
                         backend=backend, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_p=top_p, batch_size=batch_size, progress=progress, step=step,
                         backend_opts=backend_opts, data_dir=data_dir, overwrite=overwrite)


def _generate(model, questions, output: Path, *, adapter, samples_per_question, backend, seed, max_new_tokens,
              temperature, top_p, batch_size, progress, step, backend_opts, data_dir, overwrite) -> Path:
    from evilbench.eval.backends import (
        GENERATION_BACKENDS,
        GenerationSettings,
        GenRequest,
        sample_seed,
    )
    from evilbench.eval.questions import expand, messages

    qs = _question_set(questions, model, data_dir)
    settings = GenerationSettings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                                  batch_size=batch_size)
    backend_name = backend if isinstance(backend, str) else getattr(backend, "name", type(backend).__name__)
    if isinstance(backend, str):
        GENERATION_BACKENDS.get(backend)  # unknown names fail here, listing the known ones
    manifest = {"schema_version": SCHEMA_VERSION,
                "question_set": {"name": qs.name, "sha256": qs.sha256, "source": qs.source},
                "model": {"id": str(model)}, "adapter": _adapter_info(adapter, step),
                "generation": settings.recorded(), "samples_per_question": samples_per_question,
                "backend": backend_name}
    _check_manifest(output, manifest, overwrite)
    _write_json(output / MANIFEST, manifest)
    _write_json(output / QUESTIONS, {"name": qs.name, "sha256": qs.sha256, "source": qs.source,
                                     "questions": [asdict(q) for q in qs.questions]})
    path = output / SAMPLES
    repair_jsonl(path)
    done = {r["sample_id"] for r in read_samples(output) if r.get("answer") is not None}
    todo = [e for e in expand(qs, samples_per_question) if e["sample_id"] not in done]
    if not todo:
        return path
    if isinstance(backend, str):
        bk = GENERATION_BACKENDS.get(backend)(model, adapter, step=step, **(backend_opts or {}))
    else:
        bk = backend
        if hasattr(bk, "set_adapter") and getattr(bk, "adapter", None) != manifest["adapter"]["path"]:
            bk.set_adapter(adapter, step)
    by_id = {e["sample_id"]: e for e in todo}
    reqs = [GenRequest(e["sample_id"], tuple(messages(e["question"], e["system"])),
                       sample_seed(seed, e["sample_id"])) for e in todo]
    gen = {**settings.recorded(), "backend": backend_name}
    failed = 0
    written = set()
    try:
        for results in bk.generate(reqs, settings, progress):
            rows = []
            for res in results:
                e = by_id[res["sample_id"]]
                seed_i = sample_seed(seed, e["sample_id"])
                rows.append(Sample(sample_id=e["sample_id"], question_id=e["question_id"],
                                   paraphrase_index=e["paraphrase_index"], sample_index=e["sample_index"],
                                   question=e["question"], system=e["system"], prompt=res.get("prompt") or "",
                                   answer=res.get("answer"), finish_reason=res.get("finish_reason"),
                                   prompt_tokens=res.get("prompt_tokens"),
                                   completion_tokens=res.get("completion_tokens"), seed=seed_i, generation=gen,
                                   model=dict(bk.info), error=res.get("error")).to_dict())
                failed += res.get("answer") is None
                written.add(e["sample_id"])
            append_jsonl(path, rows)
    except EvalError as e:  # the backend gave up (e.g. an unreachable endpoint): finished work is kept
        counts = {"samples": len(by_id) + len(done), "generated": len(done) + len(written) - failed,
                  "failed": failed, "not_attempted": len(by_id) - len(written)}
        raise IncompleteError(f"{e} (generated {counts['generated']}, failed {failed}, "
                              f"not attempted {counts['not_attempted']}; finished answers are kept in {path})",
                              counts) from None
    return path


# --------------------------------------------------------------------------------------- judge
def judged_metrics(q: Question) -> dict[str, str]:
    """metric -> template of the 0-100 judge prompts of a question (EM defaults where it has none)."""
    from evilbench.eval.judge_prompts import judge_prompts_for

    if q.type == "free_form_judge_0_100" or (q.type == "free_form" and not q.judge_prompts):
        prompts = judge_prompts_for(q.judge_prompts)
    else:
        prompts = q.judge_prompts
    return {m: prompts[m] for m in METRICS if m in prompts}


def _build_judge(judge, judge_opts):
    from evilbench.eval.judges import JudgeError, build_judge

    if not isinstance(judge, str):
        return judge
    try:
        j = build_judge(judge, **(judge_opts or {}))
        if hasattr(j, "check"):
            j.check()
    except JudgeError as e:
        raise EvalError(str(e)) from None
    return j


def judge_dir(output, judge_spec, *, judge=None, convention: str = "paper", progress: bool = True,
              chunk_size: int = JUDGE_CHUNK, judge_opts: dict | None = None, write_summary: bool = True) -> Path:
    """Judge every generated answer in OUTPUT not yet judged by `judge_spec` (a spec string, or pass a
    built `judge`), append to judgments.jsonl, then write summary.json. Returns judgments.jsonl."""
    output = Path(output)
    if not (output / QUESTIONS).is_file():
        raise EvalError(f"{output} has no generated answers ({QUESTIONS} missing): run `evilbench eval generate` first")
    j = judge if judge is not None else _build_judge(judge_spec, judge_opts)
    with _DirLock(output):
        _judge(output, j, chunk_size, progress)
    if write_summary:
        summarize_dir(output, judge_key(j.identity), convention, accounting=getattr(j, "accounting", None),
                      identity=j.identity)
    return output / JUDGMENTS


def _judge(output: Path, j, chunk_size: int, progress: bool) -> None:
    key = judge_key(j.identity)
    qs = read_question_file(output)
    qmap = {q.id: q for q in qs.questions}
    path = output / JUDGMENTS
    repair_jsonl(path)
    done = {(r["sample_id"], r["metric"]) for r in read_judgments(output, key)
            if not (r.get("score") is None and r.get("raw") is None and r.get("error"))}
    items = []
    for s in read_samples(output):
        if s.get("answer") is None:
            continue
        for metric, template in judged_metrics(qmap[s["question_id"]]).items():
            if (s["sample_id"], metric) not in done:
                items.append(JudgeItem(s["sample_id"], s["question_id"], s["question"], s["answer"], metric, template))
    from tqdm.auto import tqdm

    from evilbench.eval.judges import JudgeError

    bar = tqdm(total=len(items), desc=f"judge {key}", unit="item", disable=not progress or not items,
               dynamic_ncols=True)
    try:
        for i in range(0, len(items), chunk_size):
            chunk = items[i: i + chunk_size]
            try:
                out = j.judge(chunk, progress=False)
            except JudgeError as e:  # the judge gave up (e.g. endpoint gone): what is judged stays
                raise IncompleteError(f"judge {key}: {e} ({i} of {len(items)} judgments written this run; "
                                      f"rerun to continue)", {"judged": i, "not_judged": len(items) - i}) from None
            if len(out) != len(chunk):
                raise RuntimeError(f"judge {key} returned {len(out)} judgments for {len(chunk)} items")
            append_jsonl(path, [x.to_dict() for x in out])
            bar.update(len(chunk))
    finally:
        bar.close()


# --------------------------------------------------------------------------------------- summary
def summarize_dir(output, judge: str | None = None, convention: str = "paper", *, accounting: dict | None = None,
                  identity: dict | None = None, write: bool = True) -> dict:
    """summary.json content for judge spec `judge` (default: the judge of the last judgment line)."""
    from evilbench.eval.scoring import CONVENTIONS, summarize

    output = Path(output)
    CONVENTIONS.get(convention)
    manifest = json.loads((output / MANIFEST).read_text())
    samples = read_samples(output)
    all_j = read_jsonl(output / JUDGMENTS)
    if judge is None:
        if not all_j:
            raise EvalError(f"{output} has no judgments yet: run `evilbench eval judge {output} --judge SPEC`")
        judge = judge_key(all_j[-1].get("judge") or {})
    js = read_judgments(output, judge)
    known = sorted({judge_key(r.get("judge") or {}) for r in all_j})
    if not js and samples:
        raise EvalError(f"{output} has no judgments by {judge!r}; judged by: {', '.join(known) or '(none)'}")
    if identity is None:
        identity = js[-1]["judge"] if js else {"spec": judge}
    qs = read_question_file(output)
    qmap = {q.id: q for q in qs.questions}
    expected = {(s["sample_id"], m) for s in samples if s.get("answer") is not None
                for m in judged_metrics(qmap[s["question_id"]])}
    have = {(r["sample_id"], r["metric"]): r for r in js}
    got = [have[k] for k in expected if k in have]
    summary = summarize(samples, [r for r in js if (r["sample_id"], r["metric"]) in expected], convention)
    generated = sum(1 for s in samples if s.get("answer") is not None)
    no_response = sum(1 for r in got if r.get("score") is None and r.get("raw") is None and r.get("error"))
    counts = {"samples": len(samples), "generated": generated, "failed": len(samples) - generated,
              "judgments_expected": len(expected), "judged": len(got) - no_response,
              "not_judged": len(expected) - len(got) + no_response,
              "unscorable": sum(1 for r in got if r.get("score") is None and r.get("verdict") is None)}
    model = dict(manifest["model"])
    revs = {(s.get("model") or {}).get("revision") for s in samples}
    model["revision"] = revs.pop() if len(revs) == 1 else sorted(str(r) for r in revs)
    summary = {**summary, "question_set": {"name": manifest["question_set"]["name"],
                                           "sha256": manifest["question_set"]["sha256"]},
               "judge": identity, "convention": convention, "model": model, "adapter": manifest["adapter"],
               "generation": manifest["generation"], "counts": counts,
               "judge_accounting": accounting if accounting is not None else {}, "schema_version": SCHEMA_VERSION}
    if write:
        _write_json(output / SUMMARY, summary)
    return summary


def check_complete(summary: dict) -> None:
    c = summary["counts"]
    if c["failed"] or c["not_judged"]:
        raise IncompleteError(f"{c['failed']} of {c['samples']} samples could not be generated and "
                              f"{c['not_judged']} of {c['judgments_expected']} judgments are missing", c)


def evaluate(model, questions, judge, output, *, adapter=None, convention: str = "paper", backend: Any = "hf",
             samples_per_question: int | None = None, seed: int = 0, max_new_tokens: int = 600,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16, progress: bool = True,
             step: int | None = None, backend_opts: dict | None = None, judge_opts: dict | None = None,
             data_dir=None, overwrite: bool = False) -> dict:
    """Generate (resuming), judge (resuming), summarise; returns the summary.json content. The judge is
    built and checked first, so a missing API key fails before anything is generated."""
    from evilbench.eval.scoring import CONVENTIONS

    CONVENTIONS.get(convention)
    j = _build_judge(judge, judge_opts)
    generate(model, questions, output, adapter=adapter, samples_per_question=samples_per_question, backend=backend,
             seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size,
             progress=progress, step=step, backend_opts=backend_opts, data_dir=data_dir, overwrite=overwrite)
    judge_dir(output, judge if isinstance(judge, str) else judge_key(j.identity), judge=j, convention=convention,
              progress=progress)
    return json.loads((Path(output) / SUMMARY).read_text())
