"""Facts about the running process that results record: library versions, the machine's load, and
the one table of dtype names the command line accepts."""
from __future__ import annotations

import os
import platform

# command-line dtype names -> torch attribute names
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}
DTYPE_CHOICES = ("fp32", "bf16", "fp16")  # the short names shown in help texts


def torch_dtype(name: str):
    """torch.float32 for "fp32" or "float32", etc.; ValueError naming the choices otherwise."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use {', '.join(DTYPE_CHOICES)}")
    return getattr(torch, DTYPES[name])


def versions() -> dict:
    """Versions of evilbench and the libraries that decide its numbers."""
    import torch

    import evilbench

    out = {"evilbench": evilbench.__version__, "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cuda": torch.version.cuda}
    for lib in ("transformers", "peft", "tokenizers"):
        try:
            out[lib] = __import__(lib).__version__
        except ImportError:
            out[lib] = None
    return out


# A machine is "busy" when the 1-minute load average exceeds this fraction of its cores: timings
# against torch baselines then overstate speed-ups (OpenMP regions wait for preempted threads).
BUSY_LOAD_PER_CORE = 0.25


def machine_load() -> dict:
    """{"loadavg": [1, 5, 15 min], "cpus": n, "busy": bool}: record it with every timing."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # not available on this platform
        return {"loadavg": None, "cpus": os.cpu_count(), "busy": None}
    cpus = os.cpu_count() or 1
    return {"loadavg": load, "cpus": cpus, "busy": load[0] > BUSY_LOAD_PER_CORE * cpus}


def busy_warning(load: dict) -> str | None:
    """A warning line when `load` (from machine_load) says the machine is busy, else None."""
    if not load.get("busy"):
        return None
    return (f"warning: the machine is busy (load average {load['loadavg'][0]:.2f} on {load['cpus']} cores): "
            "timings are slower and speed-ups against the torch baselines overstated, by up to 100x; "
            "rerun on an idle machine for numbers to quote")
