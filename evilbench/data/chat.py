"""Chat JSONL: one `{"messages": [{"role": ..., "content": ...}, ...]}` object per line.

Everything is validated before any training starts; every problem is reported as `file:line: what`.
A conversation is an optional leading system message, then user/assistant turns alternating,
starting with a user turn and ending with an assistant turn (the turn that is trained).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from evilbench.errors import UserError

ROLES = ("system", "user", "assistant")
MAX_REPORTED_ERRORS = 20


class DataError(UserError, ValueError):
    """A dataset file is malformed; the message lists `file:line: problem` entries."""

    def __init__(self, problems: list[str], total: int | None = None):
        self.problems = problems
        total = len(problems) if total is None else total
        head = f"{total} problem(s) in chat data" + (f" (first {len(problems)} shown)" if total > len(problems) else "")
        super().__init__(head + ":\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[dict, ...]
    line: int  # 1-based line number in the source file


def conversation_problems(obj) -> list[str]:
    """Problems with one decoded JSON value as a conversation (empty list: valid)."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object with a 'messages' list, got {type(obj).__name__}"]
    if "messages" not in obj:
        return ["missing key 'messages'"]
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        return ["'messages' must be a non-empty list"]
    problems = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append(f"messages[{i}] must be an object, got {type(m).__name__}")
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(f"messages[{i}].role must be one of {', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str):
            problems.append(f"messages[{i}].content must be a string (got {type(content).__name__})")
        elif role == "assistant" and not content.strip():
            problems.append(f"messages[{i}] is an assistant message with empty content")
    if problems:
        return problems
    roles = [m["role"] for m in msgs]
    start = 1 if roles[0] == "system" else 0
    for i in range(start, len(roles)):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if roles[i] != want:
            where = "only first" if roles[i] == "system" else "turns must alternate user/assistant"
            problems.append(f"messages[{i}].role is {roles[i]!r} but {want!r} was expected ({where})")
            break
    if not problems and roles[-1] != "assistant":
        problems.append("the last message must be an assistant message (nothing to train on otherwise)")
    return problems


def load_chat_jsonl(path: str | Path, limit: int | None = None) -> list[ChatExample]:
    """Read and validate a chat JSONL file. Raises DataError naming file:line for every bad line
    (blank lines are skipped). `limit` keeps the first N conversations (all lines are still checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chat data file not found: {path}")
    examples: list[ChatExample] = []
    problems: list[str] = []
    total = 0

    def report(lineno: int, what: str):
        nonlocal total
        total += 1
        if len(problems) < MAX_REPORTED_ERRORS:
            problems.append(f"{path}:{lineno}: {what}")

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report(lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                report(lineno, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            bad = conversation_problems(obj)
            for b in bad:
                report(lineno, b)
            if not bad:
                msgs = tuple({"role": m["role"], "content": m["content"]} for m in obj["messages"])
                examples.append(ChatExample(msgs, lineno))
    if total:
        raise DataError(problems, total)
    if not examples:
        raise DataError([f"{path}: no conversations (file is empty)"])
    return examples[:limit] if limit is not None else examples
