"""Where evilbench keeps downloaded datasets and built models: $EVILBENCH_CACHE or ~/.cache/evilbench."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("EVILBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evilbench"
