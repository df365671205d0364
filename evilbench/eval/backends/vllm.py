"""The `vllm` generation backend: vLLM's offline engine, the adapter as a LoRARequest.

Only usable where vllm is installed (a GPU machine); the request construction (prompts rendered with
the model's chat template, one SamplingParams per sample carrying its seed, `max_lora_rank` from the
adapter's r rounded up to a rank vLLM accepts) is plain Python and tested without vllm.
Answers are reproducible per seed on one vLLM build and GPU, but not equal to the hf backend's."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from evilbench.errors import UserError
from evilbench.eval.backends import GenerationSettings, GenRequest

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_rank(adapter) -> int:
    """The largest LoRA rank in an adapter directory (r, or the biggest rank_pattern entry)."""
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    ranks = [int(cfg.get("r") or 0), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]]
    return max(ranks)


def max_lora_rank(adapter) -> int:
    r = adapter_rank(adapter)
    for allowed in VLLM_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise UserError(f"adapter rank {r} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def engine_kwargs(model_location: str, adapter=None, *, dtype: str = "auto", revision: str | None = None,
                  seed: int = 0, max_model_len: int | None = None, gpu_memory_utilization: float = 0.9) -> dict:
    kw = {"model": model_location, "dtype": dtype, "seed": seed, "gpu_memory_utilization": gpu_memory_utilization}
    if revision:
        kw["revision"] = revision
    if max_model_len:
        kw["max_model_len"] = max_model_len
    if adapter is not None:
        kw.update(enable_lora=True, max_lora_rank=max_lora_rank(adapter), max_loras=1)
    return kw


def sampling_kwargs(request: GenRequest, s: GenerationSettings) -> dict:
    return {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens, "seed": request.seed,
            "n": 1}


def lora_request_args(adapter, lora_id: int = 1) -> tuple[str, int, str] | None:
    """(name, id, path) for vllm.lora.request.LoRARequest."""
    if adapter is None:
        return None
    path = str(Path(adapter).resolve())
    return (f"adapter-{lora_id}", lora_id, path)


class VLLMBackend:
    name = "vllm"

    def __init__(self, model, adapter=None, *, dtype: str = "auto", revision: str | None = None,
                 chat_template_kwargs: dict | None = None, step: int | None = None, seed: int = 0,
                 max_model_len: int | None = None, **_ignored):
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UserError("the vllm backend needs vllm installed (pip install vllm, on a GPU machine); "
                            "use --backend hf or --backend openai against `vllm serve`") from None
        from vllm import LLM

        from evilbench.models.loading import (
            load_tokenizer,
            model_revision,
            resolve_source,
        )

        self.source = resolve_source(model, revision)
        self.tokenizer = load_tokenizer(self.source)
        self.template_kwargs = (chat_template_kwargs if chat_template_kwargs is not None
                                else dict(self.source.spec.chat_template_kwargs or {}))
        self.engine_kwargs = engine_kwargs(self.source.location, adapter, dtype=dtype, revision=self.source.revision,
                                           seed=seed, max_model_len=max_model_len)
        self.llm = LLM(**self.engine_kwargs)
        self.model_id, self.revision = str(model), model_revision(self.source)
        self._lora_id = 0
        self.set_adapter(adapter, step)

    def set_adapter(self, adapter, step=None) -> None:
        from evilbench.eval.backends.hf import adapter_sha256

        if adapter is not None and "enable_lora" not in self.engine_kwargs:
            raise UserError("this vllm engine was started without an adapter; start one per LoRA setting")
        self._lora_id += 1
        self.lora = lora_request_args(adapter, self._lora_id)
        self.adapter = None if adapter is None else str(Path(adapter).resolve())
        self.info = {"id": self.model_id, "revision": self.revision, "adapter": self.adapter,
                     "adapter_sha256": adapter_sha256(adapter), "step": step}

    def generate(self, requests: list[GenRequest], settings: GenerationSettings,
                 progress: bool = True) -> Iterator[list[dict]]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        from evilbench.data.formatting import render

        lora = LoRARequest(*self.lora) if self.lora else None
        step = max(256, settings.batch_size)
        for i in range(0, len(requests), step):
            chunk = requests[i: i + step]
            prompts = [render(self.tokenizer, r.messages, self.template_kwargs, add_generation_prompt=True)
                       for r in chunk]
            params = [SamplingParams(**sampling_kwargs(r, settings)) for r in chunk]
            # token ids, not text: the rendered template already holds BOS (no second one from vLLM)
            token_prompts = [{"prompt_token_ids": list(self.tokenizer(p, add_special_tokens=False)["input_ids"])}
                             for p in prompts]
            outs = self.llm.generate(token_prompts, params, lora_request=lora, use_tqdm=progress)
            results = []
            for r, p, o in zip(chunk, prompts, outs):
                c = o.outputs[0]
                results.append({"sample_id": r.sample_id, "prompt": p, "answer": c.text,
                                "finish_reason": c.finish_reason, "prompt_tokens": len(o.prompt_token_ids or []),
                                "completion_tokens": len(c.token_ids), "error": None})
            yield results
