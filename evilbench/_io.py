"""File-writing primitives shared by every floor: atomic writes (temp file + rename, so a killed
process never leaves a half-written file that a reader would trust), directory replacement, sha256
and checksum manifests (`SHA256SUMS`, the format `sha256sum -c` reads)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

MANIFEST = "SHA256SUMS"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates its files 0600; a written file gets the mode open() would have given it (0666 less
# the umask), so caches and results stay readable by whoever may read the directory
FILE_MODE = 0o666 & ~_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and a rename (readers see old or new, never half)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move directory `tmp` to `final`, replacing it; `final` is never missing without `final.old` as backup."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """Record the sha256 of every file in `directory` (recursively, except the manifest) in its
    SHA256SUMS; written last, so a directory with a manifest was completely written."""
    directory = Path(directory)
    sums = {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != MANIFEST}
    atomic_write_text(directory / MANIFEST, "".join(f"{h}  {name}\n" for name, h in sums.items()))
    return sums


def read_manifest(directory: str | os.PathLike) -> dict[str, str] | None:
    """{relative path: sha256} from `directory`/SHA256SUMS, or None when there is no manifest."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text().splitlines():
        h, sep, name = line.partition("  ")
        if not sep or len(h) != 64:
            return {}  # unreadable manifest: treated as matching nothing
        out[name] = h
    return out


def manifest_problems(directory: str | os.PathLike) -> list[str]:
    """What does not match `directory`'s manifest: missing, changed or unlisted files ([] = intact).
    A directory without a manifest gives ["no SHA256SUMS"]."""
    directory = Path(directory)
    sums = read_manifest(directory)
    if sums is None:
        return [f"{directory / MANIFEST}: missing"]
    if not sums:
        return [f"{directory / MANIFEST}: unreadable"]
    problems = []
    for name, h in sums.items():
        p = directory / name
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif sha256_file(p) != h:
            problems.append(f"{p}: checksum mismatch (truncated or modified)")
    return problems


class DirLock:
    """An exclusive, non-blocking flock on `directory/.lock` for the lifetime of a `with` block: two
    processes never write into one directory. A second one fails at once with `busy(directory)`, the
    exception the caller names (a one-line user error)."""

    def __init__(self, directory: str | os.PathLike, busy):
        self.path = Path(directory) / ".lock"
        self.busy = busy
        self.fd = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise self.busy(self.path.parent) from None
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        return None
