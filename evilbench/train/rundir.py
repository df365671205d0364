"""The run directory: run.json, metrics.jsonl, spectra.jsonl, checkpoints/step-NNNNNN/adapter/,
resume/ (latest full training state) and resume.prev/ (the one before), adapter/ (final).

Writes are atomic (temp + rename) so a killed run never leaves a half-written file that a resume would
trust, and every state directory and adapter carries a SHA256SUMS manifest written last: a resume
verifies the state it loads (falling back to the previous intact one), and `verify_adapter` checks an
adapter before anything evaluates it."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

from evilbench._io import (  # noqa: F401
    MANIFEST,
    DirLock,
    manifest_problems,
    read_manifest,
    replace_dir,
    sha256_file,
    write_json_atomic,
    write_manifest,
)
from evilbench.errors import UserError

RUN_SCHEMA_VERSION = 1  # run.json "schema_version"; the layout is documented in docs/run-format.md
RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
SPECTRA = "spectra.jsonl"
CHECKPOINTS = "checkpoints"
RESUME = "resume"
RESUME_PREV = "resume.prev"
FINAL_ADAPTER = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_STEP_PREFIX = "step-"


class RunDirError(UserError):
    """A run directory cannot be used as it is."""


class RunLockedError(RunDirError):
    """Another process is training into the run directory."""


class CorruptStateError(RunDirError):
    """A state file or adapter is truncated, modified or missing; `path` names it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        super().__init__(problem)


def read_json(path: Path):
    """A JSON file of the run directory; a damaged one raises CorruptStateError naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CorruptStateError(path, f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): "
                                      "the file is truncated or damaged") from None


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a complete safetensors file (header unreadable, or shorter / longer than the
    tensors its header lists), or None. Reads only the header."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path}: truncated ({size} bytes, no safetensors header)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path}: truncated (header of {n} bytes in a {size}-byte file)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return f"{path}: missing"
    except (ValueError, UnicodeDecodeError):
        return f"{path}: damaged safetensors header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{path}: truncated or damaged ({size} bytes, header describes {8 + n + end})"
    return None


def adapter_problems(path: str | os.PathLike) -> list[str]:
    """[] when the peft adapter directory `path` is intact: against its SHA256SUMS when it has one,
    otherwise (an adapter written elsewhere) a structural check of its config and weights."""
    path = Path(path)
    if not path.is_dir():
        return [f"{path}: no such adapter directory"]
    if read_manifest(path) is not None:
        problems = manifest_problems(path)
        if not problems and not (path / ADAPTER_WEIGHTS).is_file():
            problems = [f"{path / ADAPTER_WEIGHTS}: missing"]
        return problems
    problems = []
    try:
        cfg = read_json(path / ADAPTER_CONFIG)
        if not isinstance(cfg, dict):
            problems.append(f"{path / ADAPTER_CONFIG}: not a JSON object")
    except FileNotFoundError:
        problems.append(f"{path / ADAPTER_CONFIG}: missing")
    except CorruptStateError as e:
        problems.append(str(e))
    bad = safetensors_problem(path / ADAPTER_WEIGHTS)
    if bad:
        problems.append(bad)
    return problems


def verify_adapter(path: str | os.PathLike) -> str:
    """Check the peft adapter directory `path` (e.g. RUN/adapter or RUN/checkpoints/step-NNNNNN/adapter)
    before it is loaded or evaluated; return the sha256 of its adapter_model.safetensors. Raises
    CorruptStateError (a UserError: the CLI prints one line) naming the first damaged file."""
    problems = adapter_problems(path)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise CorruptStateError(Path(problems[0].split(":")[0]), f"damaged adapter: {problems[0]}{more}")
    path = Path(path)
    sums = read_manifest(path)
    return sums[ADAPTER_WEIGHTS] if sums and ADAPTER_WEIGHTS in sums else sha256_file(path / ADAPTER_WEIGHTS)


def seal(directory: str | os.PathLike) -> dict[str, str]:
    """Write the SHA256SUMS manifest of a freshly written state or adapter directory (last)."""
    return write_manifest(directory)


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
    for name in (CHECKPOINTS, RESUME, RESUME + ".old", RESUME_PREV, FINAL_ADAPTER, FINAL_ADAPTER + ".old"):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{_STEP_PREFIX}{step:06d}"


def list_checkpoints(run_dir: str | os.PathLike, verify: bool = False) -> list[tuple[int, Path]]:
    """[(step, adapter directory)] of the complete checkpoints of a run, by step. Each adapter directory
    loads with `PeftModel.from_pretrained(base_model, path)`. With `verify`, every adapter is checked
    first (`verify_adapter`): a damaged one raises CorruptStateError instead of being evaluated."""
    root = Path(run_dir) / CHECKPOINTS
    out = []
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(_STEP_PREFIX) and d.name[len(_STEP_PREFIX):].isdigit():
                adapter = d / "adapter"
                if (adapter / ADAPTER_CONFIG).is_file():
                    out.append((int(d.name[len(_STEP_PREFIX):]), adapter))
    out.sort()
    if verify:
        for _, adapter in out:
            verify_adapter(adapter)
    return out


def append_jsonl(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop lines logged after `max_step` (they belong to the part of a run that is redone on resume);
    also drops a partial last line left by a kill."""
    from evilbench._io import atomic_write_text

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
    atomic_write_text(path, "".join(keep))


def lock_is_held(run_dir: str | os.PathLike) -> bool:
    """Whether a process is training into `run_dir` right now."""
    import fcntl

    path = Path(run_dir) / ".lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def run_status(run_dir: str | os.PathLike) -> str | None:
    """The status of the run in `run_dir` as a reader should see it: run.json's status, except that a
    "running" run whose process is gone (killed: nothing could update run.json) reads "interrupted".
    None when there is no run.json."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        return None
    status = read_json(path).get("status")
    if status == "running" and not lock_is_held(run_dir):
        return "interrupted"
    return status


class RunLock(DirLock):
    """An exclusive lock on a run directory (two processes must not train into the same directory)."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir, lambda d: RunLockedError(
            f"{d} is in use by another training process (wait for it to finish, or use another output directory)"))
