"""`evilbench train --model M --dataset D --optimizer O --output DIR [...]`: LoRA fine-tuning with
log-spaced checkpoints, spectra and resume (rerun the same command on DIR to resume)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from evilbench._env import DTYPE_CHOICES
from evilbench.train.config import TrainConfig, optimizer_names, regularizer_names


def csv_list(s: str) -> list[str]:
    """A comma-separated flag value: "a, b,,c" -> ["a", "b", "c"]."""
    return [x.strip() for x in s.split(",") if x.strip()]


def _kv(s: str) -> dict:
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object: {e}") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return d


class LazyChoices:
    """argparse `choices=` from a registry that is looked up only when a value is checked or the help
    is shown, so that `evilbench --help` does not import torch."""

    def __init__(self, names):
        self._names, self._cache = names, None

    def _get(self) -> list[str]:
        if self._cache is None:
            self._cache = list(self._names())
        return self._cache

    def __contains__(self, x) -> bool:
        return x in self._get()

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def register(subparsers) -> None:
    d = TrainConfig.__dataclass_fields__
    p = subparsers.add_parser("train", help="LoRA fine-tune a model on a chat dataset", description=__doc__,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="registry name (`evilbench models list`), Hugging Face id or "
                                                  "local directory")
    p.add_argument("--dataset", required=True, help="registry name (`evilbench data list`) or .jsonl path")
    p.add_argument("--optimizer", default=d["optimizer"].default, choices=LazyChoices(optimizer_names),
                   metavar="NAME", help="sgd, adam, adamw, lion, muon, muon-torch (the optimiser registry)")
    p.add_argument("--output", "--out", dest="output", required=True, metavar="DIR",
                   help="run directory; rerun the same command to resume")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the optimiser's)")
    p.add_argument("--optimizer-kwargs", type=_kv, default={}, metavar="JSON", help="extra optimiser arguments")
    p.add_argument("--regularizer", default=None, choices=LazyChoices(regularizer_names), metavar="KIND",
                   help="spectral penalty: none, fro_nuclear, entropy, stable_rank, participation (default none)")
    p.add_argument("--reg-weight", type=float, default=d["reg_weight"].default,
                   help="weight of the spectral penalty in the loss (>= 0)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default,
                   help="conversations per micro-batch")
    p.add_argument("--grad-accum", type=int, default=d["grad_accum"].default,
                   help="micro-batches per optimiser step (effective batch = batch size x this)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, default=d["epochs"].default, help="passes over the dataset")
    g.add_argument("--max-steps", type=int, default=None, help="optimiser steps (instead of --epochs)")
    p.add_argument("--seed", type=int, default=d["seed"].default, help="LoRA init, data order and dropout")
    p.add_argument("--lora-r", type=int, default=d["lora_r"].default, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=d["lora_alpha"].default, help="LoRA alpha")
    p.add_argument("--lora-dropout", type=float, default=d["lora_dropout"].default, help="LoRA dropout")
    p.add_argument("--no-rslora", dest="rslora", action="store_false", help="scale alpha/r instead of alpha/sqrt(r)")
    p.add_argument("--target-modules", type=csv_list, default=None, metavar="A,B,...",
                   help="default: from the registry")
    p.add_argument("--target-parameters", type=csv_list, default=None, metavar="A,B,...",
                   help="fused MoE expert weights (default: from the registry)")
    p.add_argument("--lr-schedule", choices=["linear", "cosine", "constant"], default=d["lr_schedule"].default,
                   help="after warm-up")
    p.add_argument("--warmup-steps", type=int, default=d["warmup_steps"].default, help="linear warm-up steps")
    p.add_argument("--warmup-ratio", type=float, default=None, help="warm-up as a fraction of all steps "
                                                                    "(instead of --warmup-steps)")
    p.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"].default, help="0: no clipping")
    p.add_argument("--max-seq-len", type=int, default=d["max_seq_len"].default,
                   help="longer conversations are truncated (tokens)")
    p.add_argument("--max-examples", type=int, default=None, help="use only the first N conversations")
    p.add_argument("--checkpoints", type=int, default=d["checkpoints"].default, help="about this many, log-spaced")
    p.add_argument("--log-every", type=int, default=d["log_every"].default, help="steps between metrics lines")
    p.add_argument("--dtype", default=d["dtype"].default, choices=["auto", *DTYPE_CHOICES],
                   help="auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=d["device"].default, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="import a registry dataset from here if it is not cached")
    p.add_argument("--revision", default=None, help="hub revision of the model")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run")
    p.add_argument("--attn-implementation", default=None, help="e.g. sdpa, eager (default: the registry's)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument("--chat-template-kwargs", type=_kv, default=None, metavar="JSON", help="default: from the registry")
    p.add_argument("--resume-every-s", type=float, default=d["resume_every_s"].default,
                   help="also save the resume state this often (seconds)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 for models under 20M "
                                                             "parameters, else torch's)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from evilbench.errors import UserError
    from evilbench.train.loop import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fields = set(TrainConfig.__dataclass_fields__)
    try:
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
        result = train(cfg, progress=not args.no_progress, overwrite=args.overwrite)
    except (UserError, ValueError) as e:  # ValueError: also what peft and transformers raise for bad options
        if getattr(args, "debug", False):
            raise
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    if result["status"] != "finished":
        print(f"error: run {result['status']}: {result.get('error')}", file=sys.stderr)
        return 1
    print(json.dumps({k: result[k] for k in ("status", "step", "final_loss", "wall_time_s")}))
    return 0
