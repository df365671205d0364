"""Job functions for executor tests (imported by worker processes by module path)."""
from __future__ import annotations

import os
import time


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
