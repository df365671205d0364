"""The local Hugging Face judge (`hf:NAME_OR_PATH`): the judge's distribution over its answer,
computed in-process from a causal LM loaded with evilbench.models.loading (registry name, hub id from
the local cache, or a local directory). The judge prompt is the user turn of the model's chat
template (with the registry's chat_template_kwargs, e.g. Qwen3 thinking off), generation prompt added.

Two read-outs, chosen from the tokenizer (readout="auto"):
- "single-token": every number 0..100 is one token (as in OpenAI tokenizers). One forward pass; the
  top-20 next-token logprobs are the raw read-out, exactly what the API judge returns.
- "full-number": numbers split into several tokens (Qwen, Llama, SmolLM split "42" into "4","2"), so
  the first token alone says little. Each candidate string "0".."100" is scored by teacher forcing:
      P(k) = P(tokens of str(k) | prompt) * P(next token does not start with a digit | prompt, str(k))
  ("ended by a non-digit": the following token's text is empty or starts with a character other
  than 0-9, e.g. EOS / end of turn, a newline, a space or a period; "4" followed by "2" is not the
  number 4). CODE and REFUSAL are candidates too: P(tokens of the word | prompt), no end condition.
  The prompt runs once. Then, "packed" (the default where the model uses eager / sdpa attention and
  no sliding window): all candidates' tokens go in one sequence after the prompt under a custom 4-D
  attention mask (each token sees the prompt and the earlier tokens of its own candidate; positions
  restart at the prompt's end), so the prompt's KV cache is not copied. "batched" (elsewhere, e.g.
  flash attention): the prompt's KV cache is repeated over batches of `candidate_batch` candidates
  (padded on the right, so padding never influences the positions that are read). Both give the
  brute-force numbers (tests: every candidate to 1e-5 in log space).
  The raw read-out is [[candidate, log P], ...] over the 103 candidates: the candidates are disjoint
  events, so sum_k P(k) is the probability that the judge's answer is a number, and logprobs.py applies
  the same rule as to API tokens: score = sum P(k) k / sum P(k), None when sum P(k) < 0.25.
Candidates use the tokenizer's own encoding of each string (other tokenizations of the same text are
not added; a model trained on its tokenizer puts negligible mass on them)."""
from __future__ import annotations

import math

from evilbench.eval.judges.accounting import Accounting
from evilbench.eval.judges.base import CachedJudge, JudgeError
from evilbench.eval.types import VERDICTS, JudgeItem

NUMBERS = tuple(str(k) for k in range(101))
READOUTS = ("auto", "single-token", "full-number")
CANDIDATE_MODES = ("auto", "packed", "batched")  # how the full-number candidates are teacher-forced
TOP_LOGPROBS = 20
LOGPROB_FLOOR = -1e9  # stands for log 0 (-inf is not representable in the JSON cache)


def numbers_are_single_tokens(tokenizer) -> bool:
    return all(len(tokenizer.encode(s, add_special_tokens=False)) == 1 for s in NUMBERS)


def non_digit_mask(tokenizer, vocab_size: int):
    """Bool tensor [vocab_size]: True where a token's text does not start with an ASCII digit (ids the
    tokenizer does not know, e.g. padding rows of the embedding, count as non-digit)."""
    import torch

    mask = torch.ones(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, len(tokenizer))):
        text = tokenizer.decode([i])
        if text[:1].isascii() and text[:1].isdigit():
            mask[i] = False
    return mask


def candidate_logprobs(model, prompt_ids: list[int], candidates: list[list[int]], needs_end: list[bool],
                       end_mask, *, batch: int = 128) -> list[float]:
    """log P of each candidate token sequence after the prompt (times P(end) where needs_end), with
    one prompt pass whose KV cache is shared by a batch of candidates."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids], device=device)
        out = model(input_ids=ids, use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        base_cache = out.past_key_values
        end_mask = end_mask.to(device)
        result: list[float] = []
        cache, cache_rows = None, 0
        for s in range(0, len(candidates), batch):
            cands = candidates[s:s + batch]
            ends = needs_end[s:s + batch]
            B = len(cands)
            # the prompt cache repeated B times, made once and cut back to the prompt after each batch
            if cache is None or cache_rows != B or not _crop(cache, len(prompt_ids)):
                cache, cache_rows = _repeat_cache(base_cache, B), B
            L = max(len(c) for c in cands)
            inp = torch.zeros((B, L), dtype=torch.long, device=device)
            for b, c in enumerate(cands):
                inp[b, :len(c)] = torch.tensor(c, device=device)
                inp[b, len(c):] = c[-1]  # right padding (never read)
            logits = model(input_ids=inp, past_key_values=cache, use_cache=True).logits.float()
            lse = torch.logsumexp(logits, -1)  # [B, L]
            for b, c in enumerate(cands):
                lp = first[c[0]]
                for j in range(1, len(c)):
                    lp = lp + logits[b, j - 1, c[j]] - lse[b, j - 1]
                if ends[b]:
                    row = logits[b, len(c) - 1]
                    lp = lp + torch.logsumexp(row[end_mask[:row.shape[0]]], -1) - lse[b, len(c) - 1]
                lp = float(lp)
                result.append(lp if math.isfinite(lp) else LOGPROB_FLOOR)
    return result


def packed_supported(model, total_len: int) -> bool:
    """Whether the packed read-out's custom 4-D attention mask means the same to this model as its own
    masks: eager / sdpa attention, and no sliding window that the prompt + candidates could exceed."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return False
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    if getattr(cfg, "_attn_implementation", None) not in ("eager", "sdpa"):
        return False
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or ()) or getattr(cfg, "use_sliding_window", False):
        return False
    window = getattr(cfg, "sliding_window", None)
    return not window or total_len <= window


def packed_candidate_logprobs(model, prompt_ids: list[int], candidates: list[list[int]], needs_end: list[bool],
                              end_mask) -> list[float]:
    """The same numbers as candidate_logprobs with no repeated cache: every candidate's tokens in one
    sequence after the prompt, each token attending to the prompt and to the earlier tokens of its own
    candidate only (a custom 4-D mask; positions restart at the prompt's end for every candidate)."""
    import torch

    device = next(model.parameters()).device
    P = len(prompt_ids)
    flat = [t for c in candidates for t in c]
    T = len(flat)
    starts = [0]
    for c in candidates:
        starts.append(starts[-1] + len(c))
    dtype = next(model.parameters()).dtype
    allowed = torch.zeros((T, P + T), dtype=torch.bool)
    allowed[:, :P] = True
    positions = torch.empty(T, dtype=torch.long)
    for c, s0 in zip(candidates, starts):
        n = len(c)
        allowed[s0:s0 + n, P + s0:P + s0 + n] = torch.tril(torch.ones((n, n), dtype=torch.bool))
        positions[s0:s0 + n] = torch.arange(P, P + n)
    mask = torch.zeros((1, 1, T, P + T), dtype=dtype)
    mask.masked_fill_(~allowed[None, None], torch.finfo(dtype).min)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        logits = model(input_ids=torch.tensor([flat], device=device), past_key_values=out.past_key_values,
                       attention_mask=mask.to(device), position_ids=positions[None].to(device),
                       use_cache=True).logits[0].float()
        lse = torch.logsumexp(logits, -1)  # [T]
        end_mask = end_mask.to(device)
        result = []
        for c, s0, end in zip(candidates, starts, needs_end):
            lp = first[c[0]]
            for j in range(1, len(c)):
                lp = lp + logits[s0 + j - 1, c[j]] - lse[s0 + j - 1]
            if end:
                row = logits[s0 + len(c) - 1]
                lp = lp + torch.logsumexp(row[end_mask[:row.shape[0]]], -1) - lse[s0 + len(c) - 1]
            lp = float(lp)
            result.append(lp if math.isfinite(lp) else LOGPROB_FLOOR)
    return result


def _crop(cache, length: int) -> bool:
    """Cut a cache back to `length` positions in place; False where the cache cannot be cut."""
    try:
        if hasattr(cache, "is_croppable") and not cache.is_croppable:
            return False
        cache.crop(length)
    except (AttributeError, NotImplementedError, RuntimeError, ValueError, TypeError):  # e.g. sliding windows
        return False
    return cache.get_seq_length() == length


def _repeat_cache(cache, n: int):
    import copy

    c = copy.deepcopy(cache)
    c.batch_repeat_interleave(n)
    return c


class HFJudge(CachedJudge):
    def __init__(self, name_or_path: str, *, spec: str | None = None, device: str = "auto", dtype: str = "auto",
                 readout: str = "auto", revision: str | None = None, trust_remote_code: bool = False,
                 candidate_batch: int | None = None, candidate_mode: str = "auto", cache=None,
                 min_mass: float | None = None):
        from evilbench.models.loading import (
            load_tokenizer,
            model_revision,
            resolve_source,
        )
        from evilbench.models.registry import ModelError

        kw = {} if min_mass is None else {"min_mass": min_mass}
        super().__init__(spec or f"hf:{name_or_path}", cache=cache, **kw)
        if readout not in READOUTS:
            raise JudgeError(f"unknown read-out {readout!r}; known: {', '.join(READOUTS)}")
        if candidate_mode not in CANDIDATE_MODES:
            raise JudgeError(f"unknown candidate mode {candidate_mode!r}; known: {', '.join(CANDIDATE_MODES)}")
        self.candidate_mode = candidate_mode
        try:
            self.source = resolve_source(name_or_path, revision)
            self.tokenizer = load_tokenizer(self.source, trust_remote_code=trust_remote_code)
        except ModelError as e:
            raise JudgeError(f"judge {self.spec}: {e}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise JudgeError(f"judge {self.spec}: the tokenizer has no chat template")
        single = numbers_are_single_tokens(self.tokenizer)
        self.readout = ("single-token" if single else "full-number") if readout == "auto" else readout
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        # candidates per forward over the repeated prompt cache; on a CPU the copies of a big batch cost more
        # than they save (SmolLM2-135M, 350-token prompt, 1 thread: 12.6 CPU-s per read at 128, 6.5 at 16)
        self.candidate_batch = candidate_batch or (128 if str(device).startswith("cuda") else 16)
        self.snapshot = model_revision(self.source)
        self._accounting = Accounting(model=self.source.location, priced=False)
        self._model = None
        self._end_mask = None
        self._cands: list[tuple[str, list[int], bool]] | None = None
        self.warning = self.source.spec.judge_warning  # the registry's word on this model as a judge
        if self.warning:
            import sys

            print(f"warning: judge {self.spec}: {self.warning}", file=sys.stderr)

    @property
    def identity(self) -> dict:
        ident = {"spec": self.spec, "model": self.source.location, "snapshot": self.snapshot, "readout": self.readout}
        return {**ident, "warning": self.warning} if self.warning else ident

    @property
    def key_identity(self) -> dict:
        return {k: v for k, v in self.identity.items() if k != "warning"}

    @property
    def decoding(self) -> dict:
        if self.readout == "single-token":
            return {"readout": "single-token", "top_logprobs": TOP_LOGPROBS, "dtype": self.dtype}
        return {"readout": "full-number", "candidates": "0..100+CODE+REFUSAL", "end": "non-digit",
                "dtype": self.dtype}

    def prompt_ids(self, prompt: str) -> list[int]:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True,
                                                  **(self.source.spec.chat_template_kwargs or {}))
        return self.tokenizer.encode(text, add_special_tokens=False)

    def candidates(self) -> list[tuple[str, list[int], bool]]:
        """(text, token ids, needs a non-digit end) for "0".."100", CODE, REFUSAL."""
        if self._cands is None:
            def enc(s: str) -> list[int]:
                return self.tokenizer.encode(s, add_special_tokens=False)

            self._cands = [(s, enc(s), True) for s in NUMBERS] + [(v, enc(v), False) for v in VERDICTS]
        return self._cands

    def model(self):
        if self._model is None:
            from evilbench.models.loading import load_model

            self._model = load_model(self.source, dtype=self.dtype, device=self.device,
                                     trust_remote_code=self.trust_remote_code)
            vocab = self._model.get_output_embeddings().weight.shape[0]
            self._end_mask = non_digit_mask(self.tokenizer, vocab)
        return self._model

    def read(self, prompt: str) -> list[list]:
        """The raw read-out of one rendered judge prompt (see the module docstring)."""
        import torch

        model = self.model()
        ids = self.prompt_ids(prompt)
        if self.readout == "single-token":
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids], device=self.device)).logits[0, -1].float()
                lp = torch.log_softmax(logits, -1)
                top = torch.topk(lp, TOP_LOGPROBS)
            self._accounting.add(prompt_tokens=len(ids), completion_tokens=1)
            return [[self.tokenizer.decode([int(i)]), max(float(v), LOGPROB_FLOOR)]
                    for v, i in zip(top.values, top.indices)]
        cands = self.candidates()
        toks, ends = [c for _, c, _ in cands], [e for *_, e in cands]
        packed = self.candidate_mode == "packed" or (
            self.candidate_mode == "auto" and packed_supported(model, len(ids) + sum(map(len, toks))))
        if packed:
            lps = packed_candidate_logprobs(model, ids, toks, ends, self._end_mask)
        else:
            lps = candidate_logprobs(model, ids, toks, ends, self._end_mask, batch=self.candidate_batch)
        self._accounting.add(prompt_tokens=len(ids), completion_tokens=sum(len(c) for _, c, _ in cands))
        return [[s, lp] for (s, _, _), lp in zip(cands, lps)]

    def _run(self, misses: list[tuple[str, str, JudgeItem]], progress: bool) -> None:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(misses), desc=f"judge {self.spec}", unit="answer", leave=False)
        try:
            for key, prompt, _item in misses:
                self._accounting.add(calls=1)
                self._finish(key, {"raw": self.read(prompt), "snapshot": self.snapshot})
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
