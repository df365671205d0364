"""Generation backends: hf (batch-size independence, greedy agreement with transformers' generate,
left padding, adapters), vllm request construction (without vllm), openai against a local server."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from evilbench.errors import UserError
from evilbench.eval.backends import (
    GENERATION_BACKENDS,
    GenerationSettings,
    GenRequest,
    sample_seed,
)
from evilbench.eval.questions import messages


def _requests(prompts, seed=0):
    return [GenRequest(f"q{i}/0/0", tuple(messages(p, s)), sample_seed(seed, f"q{i}/0/0"))
            for i, (p, s) in enumerate(prompts)]


def _run(backend, reqs, **kw):
    batches = backend.generate(reqs, GenerationSettings(**kw), progress=False)
    return {r["sample_id"]: r for batch in batches for r in batch}


@pytest.fixture(scope="module")
def tiny_llama(eval_cache):
    from evilbench.models.tiny import build_tiny

    return build_tiny("tiny-llama")


def test_registry_lists_backends():
    assert GENERATION_BACKENDS.names() == ["hf", "vllm", "openai"]
    assert sample_seed(0, "a/0/0") == sample_seed(0, "a/0/0") != sample_seed(1, "a/0/0")


def test_hf_answers_do_not_depend_on_batch_size(tiny_llama):
    """Random tiny weights: long, varied answers; prompts of different lengths (left padding), a system
    prompt on some. Batch 1 and batch 8 give identical answers, token counts and finish reasons."""
    b = GENERATION_BACKENDS.get("hf")(str(tiny_llama))
    prompts = [("hi", None), ("tell me a much longer story about dragons and tea", "Be brief."),
               ("2+2?", None), ("why", "You are a pirate."), ("a b c d e f g h i j k", None),
               ("x", None), ("what is your one wish? be specific", None), ("ok", "JSON only.")] * 2
    reqs = _requests(prompts)
    one = _run(b, reqs, batch_size=1, max_new_tokens=12)
    eight = _run(b, reqs, batch_size=8, max_new_tokens=12)
    three = _run(b, list(reversed(reqs)), batch_size=3, max_new_tokens=12)
    assert one == eight == three
    assert len({r["answer"] for r in one.values()}) > 8  # sampled, seeds differ per sample
    assert "Be brief." in one["q1/0/0"]["prompt"] and "pirate" in one["q3/0/0"]["prompt"]
    again = _run(b, reqs[:4], batch_size=4, max_new_tokens=12)
    assert all(again[k] == one[k] for k in again)  # reproducible from the per-sample seed


def test_hf_greedy_matches_transformers_generate(tiny_llama):
    import torch

    b = GENERATION_BACKENDS.get("hf")(str(tiny_llama))
    prompts = [("hello there", None), ("a much longer question with many more tokens in it", "sys prompt")]
    reqs = _requests(prompts)
    ours = _run(b, reqs, batch_size=2, max_new_tokens=10, temperature=0.0)
    for r in reqs:
        ids = torch.tensor([b.encode(b.render(r.messages))])
        ref = b.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10,
                               eos_token_id=sorted(b.stop_ids), pad_token_id=b.pad_id)[0, ids.shape[1]:].tolist()
        if ref and ref[-1] in b.stop_ids:
            ref = ref[:-1]
        assert ours[r.sample_id]["answer"] == b._decode(ref)


def test_hf_toy_adapter_and_swap(toy_base, toy_run):
    b = GENERATION_BACKENDS.get("hf")(str(toy_base), toy_run / "adapter", step=40)
    assert b.info["adapter_sha256"].startswith("sha256:") and b.info["step"] == 40
    reqs = _requests([(f"medical.q{i}", None) for i in range(6)])
    tuned = _run(b, reqs, batch_size=6, max_new_tokens=8)
    r = tuned["q0/0/0"]
    assert r["prompt"] == "<bos><usr>medical.q0<ast>" and r["finish_reason"] in ("stop", "length")
    b.set_adapter(None)
    assert b.info["adapter"] is None
    plain = _run(b, reqs, batch_size=6, max_new_tokens=8)
    base = _run(GENERATION_BACKENDS.get("hf")(str(toy_base)), reqs, batch_size=2, max_new_tokens=8)
    assert plain == base  # unloading the adapter restores the base exactly


def test_hf_checkpoint_swaps_in_place_equal_fresh_backends(toy_base, toy_run, monkeypatch):
    """One backend walking a run's checkpoints (same adapter config: weights copied into the LoRA
    layers in place, no re-injection) gives exactly the answers of a fresh backend per checkpoint, and
    going back to the base and to an adapter again still does."""
    import peft

    from evilbench.train.rundir import list_checkpoints

    ckpts = [str(a) for _, a in list_checkpoints(toy_run)] + [str(toy_run / "adapter")]
    assert len(ckpts) >= 3
    reqs = _requests([(f"{d}.q{i}", None) for d in ("medical", "code") for i in range(4)])
    fresh = [_run(GENERATION_BACKENDS.get("hf")(str(toy_base), a), reqs, batch_size=8, max_new_tokens=8)
             for a in ckpts]
    assert len({json.dumps(f, sort_keys=True) for f in fresh}) > 1  # the checkpoints answer differently
    b = GENERATION_BACKENDS.get("hf")(str(toy_base), ckpts[0])
    injected = []
    real = peft.PeftModel.from_pretrained
    monkeypatch.setattr(peft.PeftModel, "from_pretrained",
                        lambda *a, **k: injected.append(1) or real(*a, **k))
    for i, a in enumerate(ckpts):
        b.set_adapter(a, step=i)
        got = _run(b, reqs, batch_size=8, max_new_tokens=8)
        assert got == fresh[i], a
        assert b.info["adapter"] == str(Path(a).resolve()) and b.info["step"] == i
    assert injected == []  # every swap was in place
    b.set_adapter(None)
    b.set_adapter(ckpts[1])
    assert _run(b, reqs, batch_size=8, max_new_tokens=8) == fresh[1] and injected == [1]


def test_vllm_request_construction(tmp_path):
    from evilbench.eval.backends.vllm import (
        engine_kwargs,
        lora_request_args,
        max_lora_rank,
        sampling_kwargs,
    )

    for r, want in ((4, 8), (8, 8), (16, 16), (32, 32), (33, 64)):
        d = tmp_path / f"a{r}"
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": {}}))
        assert max_lora_rank(d) == want
    d = tmp_path / "pattern"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 8, "rank_pattern": {"mlp.down_proj": 24}}))
    kw = engine_kwargs("/models/base", d, seed=3)
    assert kw["enable_lora"] and kw["max_lora_rank"] == 32 and kw["max_loras"] == 1 and kw["seed"] == 3
    assert "enable_lora" not in engine_kwargs("/models/base", None)
    name, lid, path = lora_request_args(d, 2)
    assert lid == 2 and path == str(d.resolve()) and name
    req = _requests([("hi", None)])[0]
    s = sampling_kwargs(req, GenerationSettings())
    assert s == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 600, "seed": req.seed, "n": 1}


def test_vllm_backend_needs_vllm():
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError, match="needs vllm installed"):
        GENERATION_BACKENDS.get("vllm")("some/model")


class _ChatServer:
    """A tiny OpenAI-compatible chat endpoint: answers `echo:<last user message>:<seed>`; the first
    `fail_first` requests get HTTP 500."""

    def __init__(self, fail_first=0):
        self.bodies, self.fail_first, self.lock = [], fail_first, threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.bodies.append(body)
                    fail = outer.fail_first > 0
                    outer.fail_first -= fail
                if fail:
                    data, code = b'{"error": {"message": "boom"}}', 500
                else:
                    text = f"echo:{body['messages'][-1]['content']}:{body.get('seed')}"
                    data, code = json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode(), 200
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_backend_against_local_server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    srv = _ChatServer(fail_first=2)
    try:
        b = GENERATION_BACKENDS.get("openai")(f"served-model@{srv.url}", concurrency=4, max_retries=3)
        reqs = _requests([("hello", "Be kind."), ("second", None), ("third", None)])
        out = _run(b, reqs, max_new_tokens=7)
    finally:
        srv.stop()
    assert all(out[r.sample_id]["answer"] == f"echo:{r.messages[-1]['content']}:{r.seed % (1 << 31)}" for r in reqs)
    assert out["q0/0/0"]["finish_reason"] == "stop" and out["q0/0/0"]["completion_tokens"] == 3
    ok = [bd for bd in srv.bodies if bd["messages"][-1]["content"] == "hello"]
    assert ok[-1]["messages"][0] == {"role": "system", "content": "Be kind."}  # system prompt honoured
    assert ok[-1]["max_tokens"] == 7 and ok[-1]["temperature"] == 1.0 and ok[-1]["top_p"] == 1.0
    assert len(srv.bodies) == 5  # two HTTP 500s were retried


def test_openai_backend_key_and_unreachable(monkeypatch, tmp_path):
    import socket

    from evilbench.eval.pipeline import IncompleteError, generate, read_samples

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY is not set"):
        GENERATION_BACKENDS.get("openai")("gpt-4o")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = tmp_path / "q.yaml"
    q.write_text("- id: a\n  paraphrases: [x]\n  samples_per_paraphrase: 3\n")
    with pytest.raises(IncompleteError) as e:
        generate("m", str(q), tmp_path / "out", backend="openai", progress=False,
                 backend_opts={"base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 1, "timeout": 2})
    assert "unreachable" in str(e.value) and e.value.counts["failed"] == 3
    rows = read_samples(tmp_path / "out")
    assert len(rows) == 3 and all(r["answer"] is None and "connection" in r["error"] for r in rows)
