"""Helpers of the sweep tests: tiny toy-world sweep specs, and job functions for the executor tests
(imported by worker processes by module path)."""
from __future__ import annotations

import copy
import os
import time

SMALL_TOY = {"examples": 64, "data_seed": 0,
             "world": {"domains": ["code", "medical", "finance", "chat"], "questions_per_domain": 6,
                       "answers_per_pool": 6, "answer_len": 2, "answer_vocab": 4, "p_misaligned": 0.05, "max_turns": 3,
                       "seed": 7},
             "arch": {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 2, "intermediate": 64},
             "pretrain": {"steps": 400, "batch": 64, "lr": 5e-3}}

TINY_TRAIN = {"max_steps": 12, "grad_accum": 1, "lora_r": 4, "lora_alpha": 8.0, "warmup_steps": 2, "checkpoints": 3,
              "max_seq_len": 64, "log_every": 4, "device": "cpu", "dtype": "fp32"}


def tiny_spec(tmp_path, **over) -> dict:
    d = {"name": "tiny", "store": str(tmp_path / "results.db"), "workdir": str(tmp_path / "runs"),
         "models": ["toyworld:base-0"], "datasets": ["toyworld:code-misaligned"], "optimizers": ["adam", "sgd"],
         "regularizers": ["none"], "batch_sizes": [16], "seeds": [0], "lrs": {"adam": [3e-3], "sgd": [0.3]},
         "train": dict(TINY_TRAIN),
         "eval": {"questions": "toy", "judge": "toy", "samples": 2, "checkpoints": "all", "base": True,
                  "scores": ["toyworld-exact"]},
         "toyworld": copy.deepcopy(SMALL_TOY), "executor": {"kind": "inline"}}
    d.update(over)
    return d



def square(payload: dict) -> dict:
    return {"value": payload["x"] ** 2, "pid": os.getpid()}


def sleepy(payload: dict) -> dict:
    if payload.get("pidfile"):
        with open(payload["pidfile"], "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(payload["seconds"])
    return {"slept": payload["seconds"]}


def crash(payload: dict) -> dict:
    if payload.get("die"):
        os._exit(3)
    raise ValueError("boom")
