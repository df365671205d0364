"""The run directory: run.json, metrics.jsonl, spectra.jsonl, checkpoints/step-NNNNNN/adapter/,
resume/ (latest full training state), adapter/ (final). Writes are atomic (temp + rename) so a
killed run never leaves a half-written file that a resume would trust."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
SPECTRA = "spectra.jsonl"
CHECKPOINTS = "checkpoints"
RESUME = "resume"
FINAL_ADAPTER = "adapter"
_STEP_PREFIX = "step-"


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move directory `tmp` to `final`, replacing it; never leaves `final` missing without a backup."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def remove_temporaries(run_dir: Path) -> None:
    """Half-written directories left by a killed run (they are never read)."""
    run_dir = Path(run_dir)
    for pattern in (".resume-*", ".adapter-*", f"{CHECKPOINTS}/.{_STEP_PREFIX}*", ".*.json.*", ".*.jsonl.*"):
        for p in run_dir.glob(pattern):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def remove_run(run_dir: Path) -> None:
    """Delete what a run wrote into `run_dir` (and nothing else the directory may hold)."""
    run_dir = Path(run_dir)
    for name in (RUN_JSON, METRICS, SPECTRA):
        (run_dir / name).unlink(missing_ok=True)
    for name in (CHECKPOINTS, RESUME, RESUME + ".old", FINAL_ADAPTER, FINAL_ADAPTER + ".old"):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{_STEP_PREFIX}{step:06d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, adapter directory)] of the complete checkpoints of a run, by step. Each adapter directory
    loads with `PeftModel.from_pretrained(base_model, path)`."""
    root = Path(run_dir) / CHECKPOINTS
    out = []
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(_STEP_PREFIX) and d.name[len(_STEP_PREFIX):].isdigit():
                adapter = d / "adapter"
                if (adapter / "adapter_config.json").is_file():
                    out.append((int(d.name[len(_STEP_PREFIX):]), adapter))
    return sorted(out)


def append_jsonl(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop lines logged after `max_step` (they belong to the part of a run that is redone on resume);
    also drops a partial last line left by a kill."""
    if not path.exists():
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= max_step:
                keep.append(line if line.endswith("\n") else line + "\n")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


class RunLock:
    """An exclusive lock on a run directory (two processes must not train into the same directory)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RuntimeError(f"{self.path.parent} is in use by another training process") from None
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
