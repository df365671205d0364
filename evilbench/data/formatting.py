"""Chat formatting with the model's own chat template, and assistant-only loss masks.

Real templates (Qwen3, Llama 3, Gemma 3) have no `{% generation %}` markers and transform what they
render (Llama/Gemma trim contents, Qwen3 adds an empty think block to the last assistant turn and
strips reasoning from earlier ones), so the assistant part of the rendered text is found by
rendering, not by searching for the content:

1. render the conversation with every assistant content replaced by a unique sentinel;
2. for each assistant turn, render again with that one turn's real content: the stretch that differs
   from (1) is exactly what the template produced for that content, whatever it did to it;
3. check each stretch lies inside its own turn (after the history rendered without it), splice the
   stretches into (1) and check the result equals the plain rendering character for character (a
   template whose output for one turn depends on another turn's content is refused);
4. the end-of-turn marker (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`) is what the template writes
   after an assistant turn that ends the conversation, minus trailing whitespace; it is trained so the
   model learns to stop. Whitespace the template adds after the marker is not trained.

Tokens are labelled by their character offsets (fast tokenizers): a token is trained iff it starts
inside an assistant stretch. Everything else (system, user, role headers, the generation prompt,
Qwen3's empty think block) gets label -100.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evilbench.errors import UserError

IGNORE_INDEX = -100
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: never produced by a template


class TemplateError(UserError, ValueError):
    """The chat template cannot be used for assistant-only masks (or is missing)."""


@dataclass
class EncodedChat:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def render(tokenizer, messages: Sequence[dict], template_kwargs: dict | None = None, *,
           add_generation_prompt: bool = False, chat_template: str | None = None) -> str:
    """The chat template's text for `messages` (no tokenization)."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise TemplateError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template")
    kwargs = dict(template_kwargs or {})
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )
    if not isinstance(text, str):  # some versions return a list for batched input
        raise TemplateError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n  # binary search on slice equality: fast for long strings
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    lo, hi = 0, min(len(a), len(b), limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def assistant_spans(tokenizer, messages: Sequence[dict], template_kwargs: dict | None = None, *,
                    chat_template: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and return (text, [(start, end)]) character spans of each assistant turn as
    the template wrote it, end-of-turn marker included. See the module docstring for the method."""
    def r(msgs):
        return render(tokenizer, msgs, template_kwargs, chat_template=chat_template)

    msgs = [dict(m) for m in messages]
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    for i in turns:
        if _OPEN in msgs[i]["content"] or _CLOSE in msgs[i]["content"]:
            raise TemplateError(f"messages[{i}] contains reserved private-use characters U+E000/U+E001")
    sentinel = {i: f"{_OPEN}{k}{_CLOSE}" for k, i in enumerate(turns)}
    masked = [dict(m, content=sentinel[i]) if i in sentinel else m for i, m in enumerate(msgs)]
    skeleton = r(masked)

    edits = []  # (start, end) region of `skeleton` replaced by `text`, trained through `end + marker`
    for i in turns:
        s = sentinel[i]
        pos = skeleton.find(s)
        if pos < 0 or skeleton.find(s, pos + 1) >= 0:
            raise TemplateError(f"the chat template does not render assistant messages[{i}] exactly once")
        single = r([dict(m, content=msgs[i]["content"]) if j == i else m for j, m in enumerate(masked)])
        a = _common_prefix(skeleton, single)
        tail = _common_suffix(skeleton, single, limit=min(len(skeleton), len(single)) - a)
        b = len(skeleton) - tail
        # The stretch may start before the sentinel (Qwen3 moves reasoning into the think block of the
        # same turn) but never before the end of the history as rendered without this turn.
        history = r(masked[:i])
        lo = len(history) if skeleton.startswith(history) else pos
        if not (lo <= a <= pos and b == pos + len(s)):
            raise TemplateError(
                f"the chat template changes text after assistant messages[{i}] depending on its content; "
                "assistant-only masks cannot be derived"
            )
        ending = r(masked[: i + 1])
        marker = ending[ending.index(s) + len(s):].rstrip()
        if not skeleton.startswith(marker, b):
            raise TemplateError(f"end-of-turn marker {marker!r} of messages[{i}] not found after the turn")
        edits.append((a, b, single[a: len(single) - tail], len(marker)))

    pieces, spans, cursor, out_len = [], [], 0, 0
    for a, b, text, marker_len in edits:
        if a < cursor:
            raise TemplateError("assistant turns overlap in the rendered template")
        pieces.append(skeleton[cursor:a])
        out_len += a - cursor
        pieces.append(text)
        spans.append((out_len, out_len + len(text) + marker_len))
        out_len += len(text)
        cursor = b
    pieces.append(skeleton[cursor:])
    full = "".join(pieces)
    if full != r(msgs):
        raise TemplateError("the chat template renders assistant turns inter-dependently; "
                            "assistant-only masks cannot be derived")
    return full, spans


def encode_chat(tokenizer, messages: Sequence[dict], template_kwargs: dict | None = None, *,
                max_len: int | None = None, chat_template: str | None = None) -> EncodedChat:
    """Token ids and labels (assistant tokens only; -100 elsewhere) of one conversation."""
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError("assistant-only masks need a fast tokenizer (character offsets)")
    text, spans = assistant_spans(tokenizer, messages, template_kwargs, chat_template=chat_template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for j, (start, _end) in enumerate(enc["offset_mapping"]):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= start:
            labels[j] = ids[j]
    truncated = max_len is not None and len(ids) > max_len
    if truncated:
        ids, labels = ids[:max_len], labels[:max_len]
    return EncodedChat(ids, labels, truncated)
