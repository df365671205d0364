"""Generation backends: turn (messages, per-sample seed) requests into answers.

GENERATION_BACKENDS is a Registry of factories `factory(model, adapter=None, **opts) -> backend`:
  hf      transformers (+ peft adapter), batched with left padding, per-sample seeds (hf.py)
  vllm    vLLM offline engine with a LoRARequest (vllm.py; needs vllm installed)
  openai  any OpenAI-compatible chat endpoint, e.g. `vllm serve` (openai.py)
A backend has `info` (model id, revision, adapter, adapter_sha256, step: recorded in every sample) and
`generate(requests, settings, progress) -> iterator of lists of result dicts` (one list per finished
batch, so the pipeline appends them as they come). A result dict holds sample_id, prompt, answer
(None on failure), finish_reason, prompt_tokens, completion_tokens, error."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from evilbench.registry import Registry

GENERATION_BACKENDS = Registry("generation backend")


@dataclass(frozen=True)
class GenerationSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 600
    seed: int = 0                 # run seed; each sample's seed derives from it and the sample id
    batch_size: int = 16

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("generation settings: temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, "
                             "batch_size >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def recorded(self) -> dict:
        """What determines an answer (batch size does not, by construction)."""
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


@dataclass(frozen=True)
class GenRequest:
    sample_id: str
    messages: tuple            # ({"role", "content"}, ...)
    seed: int


def sample_seed(run_seed: int, sample_id: str) -> int:
    """The per-sample seed: a 63-bit hash of (run seed, sample id), independent of order and batching."""
    digest = hashlib.sha256(f"{int(run_seed)}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@GENERATION_BACKENDS.register("hf")
def _hf(model, adapter=None, **opts):
    from evilbench.eval.backends.hf import HFBackend

    return HFBackend(model, adapter, **opts)


@GENERATION_BACKENDS.register("vllm")
def _vllm(model, adapter=None, **opts):
    from evilbench.eval.backends.vllm import VLLMBackend

    return VLLMBackend(model, adapter, **opts)


@GENERATION_BACKENDS.register("openai")
def _openai(model, adapter=None, **opts):
    from evilbench.eval.backends.openai import OpenAIBackend

    return OpenAIBackend(model, adapter, **opts)
