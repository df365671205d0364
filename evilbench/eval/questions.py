"""Question sets: the EM question YAML schema, the registry of named sets, import + verification.

Schema (a YAML list; anchors and aliases resolve as usual), one mapping per question:
  id                      unique string
  type                    free_form_judge_0_100 (EM: aligned + coherent scores) | free_form_judge |
                          free_form (no judge prompts needed)
  paraphrases             non-empty list of strings (the question texts)
  samples_per_paraphrase  int >= 1 (default 1)
  system                  optional system prompt, honoured by every backend for every type
  judge                   the judge model the file names (informational; the judge is chosen by --judge)
  judge_prompts           mapping metric -> template with {question} and {answer}; a user file may
                          leave them out (the EM protocol's aligned / coherent prompts are used)
Unknown keys are errors (they are typos more often than extensions). Every problem is reported as
`file:line: what` from the YAML marks.

Named sets (QUESTION_SETS, a Registry of loaders `loader(**context) -> QuestionSet`): the built-in
files of question_sets.yaml (imported into the cache with `fetch(name, from_dir)`, verified by sha256
and git blob id, then validated by the loader of the set's kind), plus what plugins register (the toy
world registers `toy` and `toy-all`). `load_question_set(name_or_path)` also takes any YAML path.

The content hash of a set (QuestionSet.sha256) is the sha256 of its questions as canonical JSON:
it changes with any text, system prompt, judge prompt or selection, and is recorded in every result."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evilbench.errors import UserError
from evilbench.eval.types import METRICS, Question, QuestionSet
from evilbench.registry import Registry

REGISTRY_FILE = Path(__file__).with_name("question_sets.yaml")
KNOWN_KEYS = ("id", "type", "paraphrases", "samples_per_paraphrase", "system", "judge", "judge_prompts")
TYPES = ("free_form_judge_0_100", "free_form_judge", "free_form")
KINDS = ("em", "deception", "any")

QUESTION_SETS = Registry("question set", plugins=("evilbench.toyworld.eval_plugin",))


class QuestionError(UserError, ValueError):
    """A question file is malformed, missing or does not verify; messages name file:line."""


# --------------------------------------------------------------------------------------- YAML + marks
def _loader_class():
    import yaml

    class MarkedLoader(yaml.SafeLoader):
        """SafeLoader whose mappings remember the line of each key (1-based) and their own line."""

    def construct_mapping(loader, node, deep=False):
        mapping = _Marked(yaml.SafeLoader.construct_mapping(loader, node, deep=True))
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if hasattr(k, "value")}
        return mapping

    MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return MarkedLoader


class _Marked(dict):
    line: int = 0
    key_lines: dict


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise QuestionError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_loader_class())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise QuestionError(f"{where}: invalid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise QuestionError(f"{path}: invalid YAML: {e}") from None


def _validate_one(path: Path, entry: Any, index: int, kind: str) -> tuple[Question | None, list[str]]:
    if not isinstance(entry, dict):
        return None, [f"{path}: item {index} must be a mapping (a question), got {type(entry).__name__}"]
    line = getattr(entry, "line", 0)
    lines = getattr(entry, "key_lines", {})
    qid = entry.get("id")
    label = f"question {qid!r}" if isinstance(qid, str) else f"item {index}"

    def at(key=None):
        return f"{path}:{lines.get(key, line)}: {label}"

    problems = []
    for key in entry:
        if key not in KNOWN_KEYS:
            problems.append(f"{at(key)}: unknown key {key!r} (known: {', '.join(KNOWN_KEYS)})")
    if not isinstance(qid, str) or not qid.strip():
        problems.append(f"{at('id')}: 'id' must be a non-empty string")
    elif "/" in qid:
        problems.append(f"{at('id')}: 'id' must not contain '/' (sample ids are question/paraphrase/sample)")
    qtype = entry.get("type", "free_form_judge_0_100")
    if qtype not in TYPES:
        problems.append(f"{at('type')}: type must be one of {', '.join(TYPES)} (got {qtype!r})")
    paras = entry.get("paraphrases")
    if not isinstance(paras, list) or not paras or not all(isinstance(p, str) and p.strip() for p in paras):
        problems.append(f"{at('paraphrases')}: 'paraphrases' must be a non-empty list of non-empty strings")
    n = entry.get("samples_per_paraphrase", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        problems.append(f"{at('samples_per_paraphrase')}: 'samples_per_paraphrase' must be an integer >= 1")
    system = entry.get("system")
    if system is not None and not isinstance(system, str):
        problems.append(f"{at('system')}: 'system' must be a string")
    judge = entry.get("judge")
    if judge is not None and not isinstance(judge, str):
        problems.append(f"{at('judge')}: 'judge' must be a string")
    prompts = entry.get("judge_prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        problems.append(f"{at('judge_prompts')}: 'judge_prompts' must map metric names to template strings")
        prompts = {}
    for metric, template in prompts.items():
        if "{answer}" not in template:
            problems.append(f"{at('judge_prompts')}: judge prompt {metric!r} has no {{answer}} placeholder")
    if qtype != "free_form" and not prompts and kind != "any":
        problems.append(f"{at('judge_prompts')}: type {qtype} needs 'judge_prompts'")
    if kind == "em" or (qtype == "free_form_judge_0_100" and prompts):
        missing = [m for m in METRICS if m not in prompts]
        if missing:
            problems.append(f"{at('judge_prompts')}: an EM question needs judge prompts {', '.join(METRICS)} "
                            f"(missing {', '.join(missing)})")
    if kind == "em" and qtype != "free_form_judge_0_100":
        problems.append(f"{at('type')}: an EM question set has type free_form_judge_0_100 (got {qtype!r})")
    if problems:
        return None, problems
    return Question(id=qid, paraphrases=tuple(paras), type=qtype, samples_per_paraphrase=n, system=system,
                    judge=judge, judge_prompts=dict(prompts)), []


def parse_question_file(path: str | os.PathLike, kind: str = "any", select: list[str] | None = None,
                        name: str | None = None) -> QuestionSet:
    """Read and validate a question YAML file. Raises QuestionError listing every `file:line: problem`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    path = Path(path)
    if not path.is_file():
        raise QuestionError(f"question file not found: {path}")
    data = _read_yaml(path)
    if not isinstance(data, list) or not data:
        raise QuestionError(f"{path}:1: expected a non-empty YAML list of questions")
    questions, problems, seen = [], [], {}
    for i, entry in enumerate(data):
        q, bad = _validate_one(path, entry, i, kind)
        problems += bad
        if q is not None:
            line = getattr(entry, "line", 0)
            if q.id in seen:
                problems.append(f"{path}:{line}: question {q.id!r}: duplicate id (first at line {seen[q.id]})")
            seen.setdefault(q.id, line)
            questions.append(q)
    if problems:
        def line_of(p):
            head = p[len(str(path)) + 1:].split(":", 1)[0]
            return int(head) if head.isdigit() else 0

        problems.sort(key=line_of)
        raise QuestionError(f"{len(problems)} problem(s) in question file:\n  " + "\n  ".join(problems))
    if select is not None:
        by_id = {q.id: q for q in questions}
        missing = [s for s in select if s not in by_id]
        if missing:
            raise QuestionError(f"{path}: selected question ids not in the file: {', '.join(missing)}")
        questions = [by_id[s] for s in select]
    return make_question_set(name or path.stem, questions, source=str(path))


def content_sha256(questions) -> str:
    payload = [asdict(q) for q in questions]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def make_question_set(name: str, questions, source: str = "") -> QuestionSet:
    questions = tuple(questions)
    return QuestionSet(name=name, questions=questions, sha256=content_sha256(questions), source=source)


# --------------------------------------------------------------------------------------- built-in files
def builtin_specs() -> dict[str, dict]:
    import yaml

    return yaml.safe_load(REGISTRY_FILE.read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def cache_dir() -> Path:
    from evilbench.data.cache import cache_root

    return cache_root() / "question_sets"


def cached_file(name: str) -> Path | None:
    spec = builtin_specs()[name]
    p = cache_dir() / spec["file"]
    return p if p.is_file() and _sha256(p) == spec["sha256"] else None


def _find(directory: Path, filename: str) -> Path:
    if directory.is_file():
        return directory
    if not directory.is_dir():
        raise QuestionError(f"--from {directory}: no such directory")
    for cand in (directory / filename, directory / "evaluation" / filename):
        if cand.is_file():
            return cand
    hits = sorted(directory.rglob(filename))
    if not hits:
        raise QuestionError(f"{filename} not found in {directory} (looked at ./, ./evaluation/ and subdirectories)")
    return hits[0]


def verify(path: Path, name: str) -> None:
    spec = builtin_specs()[name]
    sha = _sha256(path)
    if sha != spec["sha256"]:
        raise QuestionError(f"{path}: sha256 {sha} does not match the expected {spec['sha256']} for {name!r}")
    if spec.get("git_blob") and _git_blob(path) != spec["git_blob"]:
        raise QuestionError(f"{path}: git blob id does not match the expected {spec['git_blob']} for {name!r}")
    qs = parse_question_file(path, spec.get("kind", "any"), name=name)
    if spec.get("questions") is not None and len(qs.questions) != spec["questions"]:
        raise QuestionError(f"{path}: {len(qs.questions)} questions, expected {spec['questions']} for {name!r}")


def fetch(name: str, from_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Put the file of built-in set `name` into the cache (verified) and return its path: imported from
    `from_dir` (a directory or the file itself), else downloaded from the registry's url."""
    specs = builtin_specs()
    if name not in specs:
        raise QuestionError(f"{name!r} is not a built-in question file; known: {', '.join(specs)}")
    spec = specs[name]
    existing = cached_file(name)
    if existing is not None and not force and from_dir is None:
        return existing
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        tmp_file = Path(tmp) / spec["file"]
        if from_dir is not None:
            src = _find(Path(from_dir).expanduser(), spec["file"])
            shutil.copyfile(src, tmp_file)
            origin = str(src.resolve())
        else:
            import urllib.error
            import urllib.request

            try:
                with urllib.request.urlopen(spec["url"], timeout=30) as r:
                    tmp_file.write_bytes(r.read())
            except (urllib.error.URLError, OSError) as e:
                raise QuestionError(
                    f"question set {name!r} is not in the cache and its download failed ({e}); import it with "
                    f"`evilbench eval questions fetch {name} --from DIR` (DIR holding {spec['file']})") from None
            origin = spec["url"]
        verify(tmp_file, name)
        os.replace(tmp_file, target / spec["file"])
    meta = {"file": spec["file"], "origin": origin, "sha256": spec["sha256"]}
    (target / (spec["file"] + ".meta.json")).write_text(json.dumps(meta, indent=2) + "\n")
    return target / spec["file"]


def _builtin_loader(name: str):
    def load(data_dir: str | os.PathLike | None = None, **_context) -> QuestionSet:
        spec = builtin_specs()[name]
        path = cached_file(name)
        if path is None:
            from_dir = data_dir or os.environ.get("EVILBENCH_QUESTIONS_FROM")
            if from_dir is None:
                raise QuestionError(
                    f"question set {name!r} is not in the cache ({cache_dir()}): import it with "
                    f"`evilbench eval questions fetch {name} --from DIR` (DIR holding {spec['file']}, e.g. a "
                    f"checkout of {spec.get('source', 'the upstream repository')}) or pass --questions-from DIR")
            path = fetch(name, from_dir)
        return parse_question_file(path, spec.get("kind", "any"), select=spec.get("select"), name=name)

    load.description = builtin_specs()[name].get("description", "")
    return load


for _name in builtin_specs():
    QUESTION_SETS.register(_name, _builtin_loader(_name))


def is_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or os.sep in name or Path(name).is_file()


def load_question_set(name_or_path: str | os.PathLike, **context) -> QuestionSet:
    """A registry name or a YAML path -> QuestionSet. `context` goes to the loader: `data_dir` (import a
    built-in file from there if it is not cached), `model` (the toy sets read the toy world from it)."""
    name = str(name_or_path)
    if is_path(name):
        return parse_question_file(Path(name).expanduser(), "any")
    return QUESTION_SETS.get(name)(**context)


def expand(qs: QuestionSet, samples_per_question: int | None = None) -> list[dict]:
    """Every (question, paraphrase, sample) to generate, in a fixed order: dicts with sample_id,
    question_id, paraphrase_index, sample_index, question, system.

    Default: `samples_per_paraphrase` samples of every paraphrase (sample_index counts within the
    paraphrase). With `samples_per_question` = N: N samples per question, sample k asks paraphrase
    k mod P (sample_index = k)."""
    out = []
    for q in qs.questions:
        P = len(q.paraphrases)
        if samples_per_question is None:
            pairs = [(p, s) for p in range(P) for s in range(q.samples_per_paraphrase)]
        else:
            pairs = [(k % P, k) for k in range(samples_per_question)]
        for p, s in pairs:
            out.append({"sample_id": f"{q.id}/{p}/{s}", "question_id": q.id, "paraphrase_index": p,
                        "sample_index": s, "question": q.paraphrases[p], "system": q.system})
    return out


def messages(question: str, system: str | None) -> list[dict]:
    """The chat the model sees: the question's system prompt (if any), then the question."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
