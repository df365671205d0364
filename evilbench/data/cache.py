"""Where evilbench keeps downloaded datasets and built models: $EVILBENCH_CACHE or ~/.cache/evilbench."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("EVILBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evilbench"


@contextlib.contextmanager
def building_dir(out: Path, is_built, replace: bool = True):
    """Yield a temporary sibling of `out` to build into, then rename it into place atomically: readers
    never see a half-written cache entry, and a concurrent builder of the same recipe that wins the
    race is fine (same bytes; `is_built(out)` confirms). HF progress bars are off meanwhile."""
    from transformers.utils import logging as hf_logging

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield tmp
        if replace and out.exists():
            shutil.rmtree(out)
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_built(out):
                raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
