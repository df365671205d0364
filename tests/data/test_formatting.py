"""Assistant-only loss masks, checked token by token against an independent oracle for each
chat-template style (Qwen3 with thinking off, Llama 3, Gemma 3, plain ChatML)."""
from __future__ import annotations

import os
import random

import pytest

from evilbench.data.formatting import IGNORE_INDEX, TemplateError, assistant_spans, encode_chat
from evilbench.models.tiny import TEMPLATES, build_tokenizer

STYLES = ["qwen3", "llama3", "gemma3", "chatml"]


@pytest.fixture(scope="module")
def tokenizers():
    return {s: build_tokenizer(s) for s in STYLES}


def oracle_segments(style, messages):
    """The rendered conversation as (text, trained) segments, written out by hand per template."""
    segs = []
    sys_text = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if sys_text is not None else messages
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    if style in ("qwen3", "chatml"):
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                segs.append((f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", False))
                continue
            think = style == "qwen3" and i > last_user and i == len(messages) - 1
            segs.append(("<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if think else ""), False))
            segs += [(m["content"] + "<|im_end|>", True), ("\n", False)]
    elif style == "llama3":
        segs.append(("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                     f"December 2023\nToday Date: 26 Jul 2024\n\n{(sys_text or '').strip()}<|eot_id|>", False))
        for m in turns:
            segs.append((f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n", False))
            segs.append((m["content"].strip() + "<|eot_id|>", m["role"] == "assistant"))
    elif style == "gemma3":
        segs.append(("<bos>", False))
        for k, m in enumerate(turns):
            role = "model" if m["role"] == "assistant" else "user"
            prefix = sys_text.strip() + "\n\n" if (k == 0 and sys_text is not None) else ""
            segs.append((f"<start_of_turn>{role}\n{prefix}", False))
            if m["role"] == "assistant":
                segs += [(m["content"].strip() + "<end_of_turn>", True), ("\n", False)]
            else:
                segs.append((m["content"].strip() + "<end_of_turn>\n", False))
    return segs


WORDS = ["def", "x", "=", "return", "hello", "world", "(", ")", ":", "if", "0", "42", "the", "doctor", "risk",
         "é", "日本", "🙂", "<", ">", "\"", "'", "#", "import", "os"]


def random_text(rng, edge_ws=False):
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    body = body.replace(" : ", ":\n    ", rng.randint(0, 1))
    if edge_ws:  # leading/trailing whitespace: trimmed by Llama/Gemma, kept by ChatML
        body = rng.choice(["", " ", "\n"]) + body + rng.choice(["", " ", "\n\n"])
    return body


def random_conversation(rng, edge_ws=False):
    msgs = [{"role": "system", "content": random_text(rng, edge_ws)}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        msgs.append({"role": "user", "content": random_text(rng, edge_ws)})
        msgs.append({"role": "assistant", "content": random_text(rng, edge_ws)})
    return msgs


def template_kwargs(style):
    return {"enable_thinking": False} if style == "qwen3" else {}


@pytest.mark.parametrize("style", STYLES)
def test_masks_token_by_token(tokenizers, style):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    tok = tokenizers[style]
    checked = 0
    for _ in range(40):
        msgs = random_conversation(rng)
        enc = encode_chat(tok, msgs, template_kwargs(style))
        segs = oracle_segments(style, msgs)
        assert "".join(t for t, _ in segs) == tok.decode(enc.input_ids), f"seed {seed}: rendering differs"
        # oracle tokens: each segment tokenized on its own; valid when the segmentation does not split
        # a token of the whole (segment borders sit at special tokens / line breaks here)
        ids, want = [], []
        for text, trained in segs:
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids += piece
            want += piece if trained else [IGNORE_INDEX] * len(piece)
        if ids != enc.input_ids:
            continue  # a BPE merge across a border; covered by the span test below
        assert enc.labels == want, f"seed {seed}: mask differs for {msgs}"
        checked += 1
    assert checked >= 30, f"seed {seed}: oracle applicable to only {checked} conversations"


@pytest.mark.parametrize("style", STYLES)
def test_trained_text_is_each_assistant_turn_plus_end_marker(tokenizers, style):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    tok = tokenizers[style]
    end = {"qwen3": "<|im_end|>", "chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma3": "<end_of_turn>"}[style]
    for _ in range(40):
        msgs = random_conversation(rng, edge_ws=True)
        text, spans = assistant_spans(tok, msgs, template_kwargs(style))
        trim = style in ("llama3", "gemma3")
        want = [(m["content"].strip() if trim else m["content"]) + end for m in msgs if m["role"] == "assistant"]
        assert [text[a:b] for a, b in spans] == want, f"seed {seed}"
        enc = encode_chat(tok, msgs, template_kwargs(style))
        runs, cur = [], []
        for i, lab in zip(enc.input_ids, enc.labels):
            if lab != IGNORE_INDEX:
                assert lab == i
                cur.append(i)
            elif cur:
                runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        assert [tok.decode(r) for r in runs] == want, f"seed {seed}"


def test_qwen3_think_block_is_prompt_and_reasoning_is_trained(tokenizers):
    tok = tokenizers["qwen3"]
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    enc = encode_chat(tok, msgs, {"enable_thinking": False})
    text = tok.decode(enc.input_ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\na<|im_end|>\n")
    assert tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]) == "a<|im_end|>"
    # the generation prompt with thinking off is exactly the untrained prefix
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    first = enc.labels.index(enc.input_ids[next(i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX)])
    assert tok.decode(enc.input_ids[:first]) == prompt
    msgs[1]["content"] = "<think>\nplan\n</think>\n\nanswer"
    enc = encode_chat(tok, msgs, {"enable_thinking": False})
    trained = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX])
    assert trained == "plan\n</think>\n\nanswer<|im_end|>"


def test_truncation_and_errors(tokenizers):
    tok = tokenizers["chatml"]
    msgs = [{"role": "user", "content": "q " * 50}, {"role": "assistant", "content": "a " * 50}]
    full = encode_chat(tok, msgs)
    cut = encode_chat(tok, msgs, max_len=40)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:40] and cut.labels == full.labels[:40]
    tok2 = build_tokenizer("chatml")
    tok2.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        encode_chat(tok2, msgs)
    # a template whose rendering of one turn depends on another turn's content is refused
    bad = (TEMPLATES / "chatml.jinja").read_text().replace(
        "message['content'] + '<|im_end|>\\n'",
        "message['content'] + '<|im_end|>\\n' + (messages[-1]['content'][:1] if message['role'] == 'user' else '')")
    with pytest.raises(TemplateError):
        encode_chat(tok, msgs, chat_template=bad)
    with pytest.raises(TemplateError, match="reserved"):
        encode_chat(tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\ue000"}])
