"""Tokenise a chat dataset once (padded int32 tensors in memory) and cut deterministic batches from
it: the data order of optimiser step s is a pure function of (seed, s), so a resumed run sees
exactly the batches an uninterrupted run would."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from evilbench.data.formatting import IGNORE_INDEX, encode_chat


@dataclass
class TokenizedDataset:
    """Every conversation of the file has a row; only the rows a run uses are tokenised (the others
    have length 0 and are never batched)."""
    input_ids: torch.Tensor  # [N, Lmax] int32, padded
    labels: torch.Tensor     # [N, Lmax] int32, IGNORE_INDEX where no loss
    lengths: torch.Tensor    # [N] int64 (0: not tokenised)
    n_trained: torch.Tensor  # [N] int64: assistant tokens per conversation
    lines: list[int]         # source line of each conversation
    n_truncated: int
    n_dropped: int           # tokenised conversations without any assistant token left after truncation
    n_tokenized: int = 0     # conversations tokenised (the ones the run's steps use)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def tokenize_dataset(tokenizer, examples, template_kwargs: dict | None, max_len: int,
                     progress: bool = False, indices=None) -> TokenizedDataset:
    """Tokenise `examples[i]` for i in `indices` (default: all). A conversation left without an
    assistant token by truncation stays in place and contributes no loss (the batch order does not
    depend on which conversations were tokenised)."""
    from tqdm.auto import tqdm

    todo = range(len(examples)) if indices is None else sorted({int(i) for i in indices})
    encoded, truncated, dropped = {}, 0, 0
    for i in tqdm(todo, desc="tokenize", disable=not progress or len(todo) < 2000, leave=False):
        enc = encode_chat(tokenizer, examples[i].messages, template_kwargs, max_len=max_len)
        truncated += enc.truncated
        dropped += all(x == IGNORE_INDEX for x in enc.labels[1:])  # position 0 is never predicted
        encoded[i] = enc
    if not encoded or dropped == len(encoded):
        from evilbench.train.config import ConfigError

        raise ConfigError(f"no conversation has an assistant token within max_seq_len={max_len}")
    n, lmax = len(examples), max(len(e.input_ids) for e in encoded.values())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((n, lmax), pad, dtype=torch.int32)
    labels = torch.full((n, lmax), IGNORE_INDEX, dtype=torch.int32)
    lengths = torch.zeros(n, dtype=torch.int64)
    for i, e in encoded.items():
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.int32)
        labels[i, : len(e.labels)] = torch.tensor(e.labels, dtype=torch.int32)
        lengths[i] = len(e.input_ids)
    n_trained = (labels[:, 1:] != IGNORE_INDEX).sum(1)
    return TokenizedDataset(ids, labels, lengths, n_trained, [ex.line for ex in examples], truncated, dropped,
                            len(encoded))


class BatchPlan:
    """Examples are consumed as one stream of per-epoch permutations; step s takes the next
    batch_size * grad_accum of them (batches run across epoch borders)."""

    def __init__(self, n: int, batch_size: int, grad_accum: int, seed: int):
        self.n, self.batch_size, self.grad_accum, self.seed = n, batch_size, grad_accum, seed
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one epoch in memory
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        start = step * self.per_step
        out = []
        while len(out) < self.per_step:
            epoch, offset = divmod(start + len(out), self.n)
            take = min(self.per_step - len(out), self.n - offset)
            out.extend(self._perm(epoch)[offset: offset + take].tolist())
        return torch.tensor(out, dtype=torch.int64)

    def epoch_of(self, step: int) -> float:
        return step * self.per_step / self.n

    def used(self, steps: int) -> torch.Tensor:
        """The example indices that steps 0 .. steps-1 consume (all of them after one epoch)."""
        if steps * self.per_step >= self.n:
            return torch.arange(self.n)
        return torch.cat([self.indices(s) for s in range(steps)]).unique()


def collate(data: TokenizedDataset, idx: torch.Tensor, device) -> dict:
    """A right-padded micro-batch trimmed to its longest conversation."""
    lengths = data.lengths[idx]
    length = int(lengths.max())
    ids = data.input_ids[idx, :length].long()
    labels = data.labels[idx, :length].long()
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    non_blocking = str(device).startswith("cuda")
    return {"input_ids": ids.to(device, non_blocking=non_blocking),
            "attention_mask": mask.to(device, non_blocking=non_blocking),
            "labels": labels.to(device, non_blocking=non_blocking),
            "n_tokens": int(lengths.sum()), "n_trained": int(data.n_trained[idx].sum())}
