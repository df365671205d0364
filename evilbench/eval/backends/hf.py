"""The `hf` generation backend: transformers, optionally with a peft LoRA adapter.

Batched with LEFT padding (attention mask + explicit position ids) and a KV cache, sampled by our
own loop so that every sample draws from its own torch.Generator seeded with its per-sample seed:
token t of sample i is the inverse CDF of the (temperature / top_p shaped) next-token distribution at
one uniform drawn from generator i. An answer therefore does not depend on the batch size or on
which other samples share its batch (tests check batch 1 against batch 8).

The prompt is the model's chat template (add_generation_prompt) with the registry's
chat_template_kwargs (Qwen3: thinking off), tokenised without extra special tokens. The answer is
the generated text up to the first end-of-turn token (generation_config eos ids + tokenizer eos),
decoded without dropping special tokens (a stray special token is part of what the model said)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from evilbench.errors import UserError
from evilbench.eval.backends import GenerationSettings, GenRequest


def adapter_sha256(adapter) -> str | None:
    if adapter is None:
        return None
    from evilbench.models.loading import local_fingerprint

    return local_fingerprint(adapter)


class HFBackend:
    name = "hf"

    def __init__(self, model, adapter=None, *, device: str = "cpu", dtype: str = "auto", revision: str | None = None,
                 trust_remote_code: bool = False, chat_template_kwargs: dict | None = None, step: int | None = None,
                 attn_implementation: str | None = None, **_ignored):
        from evilbench.models.loading import (
            load_model,
            load_tokenizer,
            model_revision,
            resolve_source,
        )
        from evilbench.models.registry import ModelError

        try:
            self.source = resolve_source(model, revision)
            self.tokenizer = load_tokenizer(self.source, trust_remote_code=trust_remote_code)
            self.base = load_model(self.source, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                   attn_implementation=attn_implementation)
        except ModelError as e:
            raise UserError(str(e)) from None
        self.tokenizer.padding_side = "left"
        self.device = device
        self.template_kwargs = (chat_template_kwargs if chat_template_kwargs is not None
                                else dict(self.source.spec.chat_template_kwargs or {}))
        self.model_id = str(model)
        self.revision = model_revision(self.source)
        self.model = self.base
        self.adapter = None
        self._adapter_config = None
        self._encoded: dict = {}  # messages -> (prompt, token ids): the same questions at every checkpoint
        self.set_adapter(adapter, step)
        eos = self.base.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.stop_ids = set(eos)
        if not self.stop_ids:
            raise UserError(f"{model}: neither the generation config nor the tokenizer names an end-of-turn token")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.stop_ids)

    # ----------------------------------------------------------------------------------------- adapters
    def set_adapter(self, adapter, step: int | None = None) -> None:
        """Swap the LoRA adapter (None: the base model) without reloading the base. An adapter with the
        same adapter_config.json as the loaded one (the checkpoints of one run) only has its weights
        copied into the LoRA layers already there: the same model as a fresh PeftModel.from_pretrained,
        without re-injecting the layers."""
        import json

        from peft import PeftModel

        config = None
        if adapter is not None:
            path = Path(adapter)
            if not (path / "adapter_config.json").is_file():
                raise UserError(f"adapter directory {path} has no adapter_config.json")
            config = json.loads((path / "adapter_config.json").read_text())
        if isinstance(self.model, PeftModel) and config is not None and config == self._adapter_config:
            self._load_weights_in_place(path)
        else:
            if isinstance(self.model, PeftModel):
                self.model = self.model.unload()  # removes the LoRA layers, leaves the base weights untouched
                self.base = self.model
            if adapter is not None:
                self.model = PeftModel.from_pretrained(self.base, str(path)).to(self.device).eval()
            else:
                self.model = self.base
        self._adapter_config = config
        self.adapter = None if adapter is None else str(Path(adapter).resolve())
        self.info = {"id": self.model_id, "revision": self.revision, "adapter": self.adapter,
                     "adapter_sha256": adapter_sha256(adapter), "step": step}

    def _load_weights_in_place(self, path: Path) -> None:
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, load_peft_weights(str(path), device=self.device))
        lora_missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or lora_missing:
            raise UserError(f"adapter {path}: its weights do not match the LoRA layers of its config "
                            f"(unexpected {result.unexpected_keys[:3]}, missing {lora_missing[:3]})")

    # ----------------------------------------------------------------------------------------- prompts
    def render(self, messages) -> str:
        from evilbench.data.formatting import TemplateError, render

        try:
            return render(self.tokenizer, messages, self.template_kwargs, add_generation_prompt=True)
        except TemplateError as e:
            raise UserError(f"{self.model_id}: {e}") from None

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def _prompt(self, messages) -> tuple[str, list[int]]:
        import json

        key = json.dumps(messages, sort_keys=True)
        if key not in self._encoded:
            if len(self._encoded) > 100_000:
                self._encoded.clear()
            prompt = self.render(messages)
            self._encoded[key] = (prompt, self.encode(prompt))
        return self._encoded[key]

    # ----------------------------------------------------------------------------------------- sampling
    def generate(self, requests: list[GenRequest], settings: GenerationSettings,
                 progress: bool = True) -> Iterator[list[dict]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(requests), desc="generate", unit="answer", disable=not progress, dynamic_ncols=True)
        try:
            for i in range(0, len(requests), settings.batch_size):
                chunk = requests[i: i + settings.batch_size]
                prompts, ids = zip(*(self._prompt(r.messages) for r in chunk))
                outs = self._sample(ids, [r.seed for r in chunk], settings)
                results = []
                for r, p, pid, (toks, finish) in zip(chunk, prompts, ids, outs):
                    results.append({"sample_id": r.sample_id, "prompt": p, "answer": self._decode(toks),
                                    "finish_reason": finish, "prompt_tokens": len(pid),
                                    "completion_tokens": len(toks) + (finish == "stop"), "error": None})
                bar.update(len(chunk))
                yield results
        finally:
            bar.close()

    def _decode(self, toks: list[int]) -> str:
        return self.tokenizer.decode(toks, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _sample(self, prompt_ids: list[list[int]], seeds: list[int], s: GenerationSettings):
        """[(answer token ids without the stop token, finish reason)] for one batch."""
        import torch

        B, T = len(prompt_ids), max(len(p) for p in prompt_ids)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for i, p in enumerate(prompt_ids):
            ids[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, T - len(p):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        dev = self.device
        tokens: list[list[int]] = [[] for _ in range(B)]
        finish: list[str | None] = [None] * B
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                             use_cache=True, logits_to_keep=1)  # the prompt's last position only
            next_pos = pos[:, -1] + 1
            for t in range(s.max_new_tokens):
                active = [i for i in range(B) if finish[i] is None]
                drawn = _draw_rows(out.logits[active, -1].float().cpu(), [gens[i] for i in active],
                                   s.temperature, s.top_p)
                nxt = [self.pad_id] * B
                for i, tok in zip(active, drawn):
                    nxt[i] = tok
                    if tok in self.stop_ids:
                        finish[i] = "stop"
                    else:
                        tokens[i].append(tok)
                        if t + 1 == s.max_new_tokens:
                            finish[i] = "length"
                if all(f is not None for f in finish):
                    break
                mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
                out = self.model(input_ids=torch.tensor(nxt, dtype=torch.long)[:, None].to(dev),
                                 attention_mask=mask.to(dev), position_ids=next_pos[:, None].to(dev),
                                 past_key_values=out.past_key_values, use_cache=True)
                next_pos = next_pos + 1
        return list(zip(tokens, finish))


def _draw_rows(logits, gens, temperature: float, top_p: float) -> list[int]:
    """One token per row of `logits` [n, V], row i drawn with generator gens[i] (see _draw). Without a
    nucleus the rows are shaped and inverted together; every operation is row-wise, so a row's token
    does not depend on the other rows."""
    import torch

    if temperature == 0 or top_p < 1.0:
        return [_draw(row, g, temperature, top_p) for row, g in zip(logits, gens)]
    u = torch.tensor([torch.rand((), generator=g, dtype=torch.float64).item() for g in gens], dtype=torch.float64)
    probs = torch.softmax(logits.double() / temperature, -1)
    cdf = torch.cumsum(probs, -1)
    k = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return k.clamp(max=probs.shape[-1] - 1).tolist()


def _draw(logits, gen, temperature: float, top_p: float) -> int:
    """One token from a logit row with its own generator: greedy at temperature 0, else the inverse CDF
    of the temperature / nucleus-shaped distribution at one uniform draw (in float64)."""
    import torch

    u = torch.rand((), generator=gen, dtype=torch.float64).item()  # always drawn: streams stay aligned
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / temperature, -1)
    if top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = (torch.cumsum(sp, 0) - sp) < top_p
        sp, si = sp[keep], si[keep]
        cdf = torch.cumsum(sp, 0)
        k = int(torch.searchsorted(cdf, torch.tensor(u * float(cdf[-1]), dtype=torch.float64), right=True))
        return int(si[min(k, len(si) - 1)])
    cdf = torch.cumsum(probs, 0)
    k = int(torch.searchsorted(cdf, torch.tensor(u * float(cdf[-1]), dtype=torch.float64), right=True))
    return min(k, probs.numel() - 1)
