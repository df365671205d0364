"""`evilbench train --model M --dataset D --optimizer O --output DIR [...]`: LoRA fine-tuning with
log-spaced checkpoints, spectra and resume (rerun the same command on DIR to resume)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from evilbench.train.config import TrainConfig


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _kv(s: str) -> dict:
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object: {e}") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return d


def register(subparsers) -> None:
    d = TrainConfig.__dataclass_fields__
    p = subparsers.add_parser("train", help="LoRA fine-tune a model on a chat dataset", description=__doc__,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="registry name, Hugging Face id or local directory")
    p.add_argument("--dataset", required=True, help="registry name (see `evilbench data list`) or .jsonl path")
    p.add_argument("--optimizer", default=d["optimizer"].default, help="sgd, adam, adamw, lion, muon, muon-torch")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the optimiser's)")
    p.add_argument("--optimizer-kwargs", type=_kv, default={}, metavar="JSON", help="extra optimiser arguments")
    p.add_argument("--regularizer", default=None, metavar="KIND", help="spectral penalty, e.g. fro_nuclear (default none)")
    p.add_argument("--reg-weight", type=float, default=d["reg_weight"].default)
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default)
    p.add_argument("--grad-accum", type=int, default=d["grad_accum"].default)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, default=d["epochs"].default)
    g.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=d["seed"].default)
    p.add_argument("--lora-r", type=int, default=d["lora_r"].default)
    p.add_argument("--lora-alpha", type=float, default=d["lora_alpha"].default)
    p.add_argument("--lora-dropout", type=float, default=d["lora_dropout"].default)
    p.add_argument("--no-rslora", dest="rslora", action="store_false", help="scale alpha/r instead of alpha/sqrt(r)")
    p.add_argument("--target-modules", type=_csv, default=None, metavar="A,B,...", help="default: from the registry")
    p.add_argument("--target-parameters", type=_csv, default=None, metavar="A,B,...", help="fused MoE expert weights")
    p.add_argument("--lr-schedule", choices=["linear", "cosine", "constant"], default=d["lr_schedule"].default)
    p.add_argument("--warmup-steps", type=int, default=d["warmup_steps"].default)
    p.add_argument("--warmup-ratio", type=float, default=None)
    p.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"].default, help="0: no clipping")
    p.add_argument("--max-seq-len", type=int, default=d["max_seq_len"].default)
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--checkpoints", type=int, default=d["checkpoints"].default, help="about this many, log-spaced")
    p.add_argument("--log-every", type=int, default=d["log_every"].default)
    p.add_argument("--dtype", default=d["dtype"].default, help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--device", default=d["device"].default)
    p.add_argument("--data-dir", default=None, help="import a registry dataset from here if it is not cached")
    p.add_argument("--revision", default=None, help="hub revision of the model")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--attn-implementation", default=None)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--chat-template-kwargs", type=_kv, default=None, metavar="JSON", help="default: from the registry")
    p.add_argument("--resume-every-s", type=float, default=d["resume_every_s"].default)
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in DIR")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from evilbench.errors import UserError
    from evilbench.train.loop import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fields = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
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
