"""The `openai` generation backend: any OpenAI-compatible chat-completions endpoint (`vllm serve`,
llama.cpp's server, the OpenAI API) on the async client.

`--model` is the served model name (for `vllm serve --enable-lora --lora-modules NAME=DIR`, the
adapter's NAME), optionally `NAME@URL`; the endpoint is --base-url, else $OPENAI_BASE_URL, else the
OpenAI API. The key comes only from $OPENAI_API_KEY (never written anywhere); a loopback or other
custom endpoint without a key gets the placeholder "EMPTY", the OpenAI API without one is refused
before anything is generated. Each request carries the sample's seed; `concurrency` requests are in
flight; the client retries timeouts, 429 and 5xx with backoff (honouring Retry-After) up to
`max_retries` times. When a whole batch fails to reach the endpoint, the backend stops and raises
EvalError (the pipeline keeps every finished answer and reports the counts)."""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

from evilbench.errors import UserError
from evilbench.eval.backends import GenerationSettings, GenRequest

OPENAI_API = "https://api.openai.com/v1"


def parse_model(model: str, base_url: str | None) -> tuple[str, str | None]:
    if "@" in model and base_url is None:
        name, _, url = model.partition("@")
        return name, url
    return model, base_url


def resolve_endpoint(model: str, base_url: str | None = None) -> tuple[str, str, str]:
    """(model name, base url, api key); raises UserError when the OpenAI API is meant and no key is set."""
    name, url = parse_model(str(model), base_url)
    url = url or os.environ.get("OPENAI_BASE_URL") or OPENAI_API
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        if url.rstrip("/") == OPENAI_API:
            raise UserError("OPENAI_API_KEY is not set: the openai backend needs it for the OpenAI API "
                            "(or pass --base-url for a local OpenAI-compatible server)")
        key = "EMPTY"
    return name, url, key


class OpenAIBackend:
    name = "openai"

    def __init__(self, model, adapter=None, *, base_url: str | None = None, concurrency: int = 32,
                 timeout: float = 120.0, max_retries: int = 3, step: int | None = None, **_ignored):
        if adapter is not None:
            raise UserError("the openai backend generates with whatever the endpoint serves: load the adapter "
                            "into the server (vllm serve --enable-lora --lora-modules NAME=DIR) and pass "
                            "--model NAME instead of --adapter")
        self.model, self.base_url, self._key = resolve_endpoint(model, base_url)
        self.concurrency, self.timeout, self.max_retries = max(1, int(concurrency)), timeout, max_retries
        self.info = {"id": self.model, "revision": None, "endpoint": self.base_url, "adapter": None,
                     "adapter_sha256": None, "step": step}
        self.adapter = None

    def request_body(self, r: GenRequest, s: GenerationSettings) -> dict:
        """The chat-completions arguments of one request."""
        return {"model": self.model, "messages": [dict(m) for m in r.messages], "temperature": s.temperature,
                "top_p": s.top_p, "max_tokens": s.max_new_tokens, "seed": r.seed % (1 << 31), "n": 1}

    async def _one(self, client, sem, r: GenRequest, s: GenerationSettings) -> dict:
        import openai

        prompt = json.dumps([dict(m) for m in r.messages], ensure_ascii=False)
        async with sem:
            try:
                resp = await client.chat.completions.create(**self.request_body(r, s))
            except openai.APIConnectionError as e:  # includes timeouts, after the client's retries
                return {"sample_id": r.sample_id, "prompt": prompt, "answer": None, "error": f"connection: {e}",
                        "_unreachable": True}
            except openai.APIError as e:
                return {"sample_id": r.sample_id, "prompt": prompt, "answer": None, "error": f"{type(e).__name__}: {e}"}
        choices = getattr(resp, "choices", None) or []
        if not choices or choices[0].message is None or choices[0].message.content is None:
            return {"sample_id": r.sample_id, "prompt": prompt, "answer": None, "error": "empty response (no choices)"}
        usage = getattr(resp, "usage", None)
        return {"sample_id": r.sample_id, "prompt": prompt, "answer": choices[0].message.content,
                "finish_reason": choices[0].finish_reason, "error": None,
                "prompt_tokens": getattr(usage, "prompt_tokens", None),
                "completion_tokens": getattr(usage, "completion_tokens", None)}

    async def _batch(self, chunk, s):
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._key, timeout=self.timeout,
                                    max_retries=self.max_retries)
        try:
            sem = asyncio.Semaphore(self.concurrency)
            return await asyncio.gather(*(self._one(client, sem, r, s) for r in chunk))
        finally:
            await client.close()

    def generate(self, requests: list[GenRequest], settings: GenerationSettings,
                 progress: bool = True) -> Iterator[list[dict]]:
        from tqdm.auto import tqdm

        from evilbench.eval.pipeline import EvalError

        step = max(settings.batch_size, self.concurrency) * 4
        bar = tqdm(total=len(requests), desc="generate", unit="answer", disable=not progress, dynamic_ncols=True)
        try:
            for i in range(0, len(requests), step):
                results = asyncio.run(self._batch(requests[i: i + step], settings))
                unreachable = sum(bool(r.pop("_unreachable", False)) for r in results)
                bar.update(len(results))
                yield results
                if unreachable == len(results):
                    raise EvalError(f"endpoint {self.base_url} unreachable: {results[0]['error']}")
        finally:
            bar.close()
