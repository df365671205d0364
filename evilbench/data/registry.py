"""Registry of EM fine-tuning datasets (datasets.yaml), fetching into the cache, and resolution of a
`--dataset` argument (registry name or path) to a verified local file."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

from evilbench._io import sha256_file, write_json_atomic
from evilbench.data.cache import cache_root
from evilbench.errors import UserError

REGISTRY_FILE = Path(__file__).with_name("datasets.yaml")
REGISTRY_ENV = "EVILBENCH_DATASET_REGISTRY"  # extra YAML merged over the built-in registry


class DatasetError(UserError, RuntimeError):
    """A dataset cannot be found, fetched or verified."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    file: str
    rows: int | None = None
    sha256: str | None = None
    git_blob: str | None = None
    url: str | None = None
    license: str = ""
    redistributable: bool = False
    kind: str = ""
    control_for: str | None = None
    source: str = ""
    how_to_get: str = ""
    description: str = ""
    extra: dict = field(default_factory=dict)


def _load_yaml(path: Path) -> dict:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping of dataset name -> fields")
    return data


def registry() -> dict[str, DatasetSpec]:
    raw = _load_yaml(REGISTRY_FILE)
    extra = os.environ.get(REGISTRY_ENV)
    if extra:
        raw.update(_load_yaml(Path(extra)))
    known = {f.name for f in fields(DatasetSpec)}
    out = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "file" not in entry:
            raise DatasetError(f"dataset registry entry {name!r} needs at least a 'file' field")
        kw = {k: v for k, v in entry.items() if k in known and k != "name"}
        kw["extra"] = {k: v for k, v in entry.items() if k not in known}
        out[name] = DatasetSpec(name=name, **kw)
    return out


def get_spec(name: str) -> DatasetSpec:
    reg = registry()
    if name not in reg:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(reg))} "
                           "(or pass a path to a .jsonl file)")
    return reg[name]




def git_blob_id(path: str | Path) -> str:
    """`git hash-object` of a file: sha1 over b"blob <size>\\0" + contents."""
    h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def count_rows(path: str | Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def verify_file(path: str | Path, spec: DatasetSpec) -> dict:
    """Check digests and row count against the registry; validate every line. Returns facts."""
    from evilbench.data.chat import load_chat_jsonl

    path = Path(path)
    facts = {"sha256": sha256_file(path), "rows": count_rows(path), "bytes": path.stat().st_size}
    if spec.sha256 and facts["sha256"] != spec.sha256:
        raise DatasetError(f"{path}: sha256 {facts['sha256']} does not match the expected {spec.sha256} "
                           f"for {spec.name!r}")
    if spec.git_blob:
        blob = git_blob_id(path)
        if blob != spec.git_blob:
            raise DatasetError(f"{path}: git blob id {blob} does not match the expected {spec.git_blob} "
                               f"for {spec.name!r}")
    if spec.rows is not None and facts["rows"] != spec.rows:
        raise DatasetError(f"{path}: {facts['rows']} rows, expected {spec.rows} for {spec.name!r}")
    load_chat_jsonl(path)  # raises DataError with file:line on malformed content
    facts["verified"] = [k for k in ("sha256", "git_blob", "rows") if getattr(spec, k)]
    return facts


def dataset_dir(name: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "datasets" / name


def cached_path(name: str, root: Path | None = None) -> Path | None:
    spec = get_spec(name)
    p = dataset_dir(name, root) / spec.file
    return p if p.is_file() and (p.parent / "meta.json").is_file() else None


def _find_in_dir(directory: Path, filename: str) -> Path:
    if directory.is_file():
        return directory
    if not directory.is_dir():
        raise DatasetError(f"--data-dir {directory}: no such directory")
    for cand in (directory / filename, directory / "data" / filename):
        if cand.is_file():
            return cand
    hits = sorted(directory.rglob(filename))
    if not hits:
        raise DatasetError(f"{filename} not found in {directory} (looked at ./, ./data/ and all subdirectories)")
    return hits[0]


def _download(url: str, dest: Path, progress: bool) -> None:
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}",
                      disable=not progress) as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(f"download of {url} failed: {e}") from e


def fetch(name: str, from_dir: str | Path | None = None, *, force: bool = False, progress: bool = True,
          root: Path | None = None) -> Path:
    """Put dataset `name` into the cache (verified) and return its path. With `from_dir`, import the
    file from a local directory (or file); otherwise download it if it is redistributable."""
    spec = get_spec(name)
    existing = cached_path(name, root)
    if existing and not force and from_dir is None:
        return existing
    target_dir = dataset_dir(name, root)
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        tmp_file = Path(tmp) / spec.file
        if from_dir is not None:
            src = _find_in_dir(Path(from_dir).expanduser(), spec.file)
            shutil.copyfile(src, tmp_file)
            origin = str(src.resolve())
        else:
            if not spec.redistributable or not spec.url:
                raise DatasetError(
                    f"dataset {name!r} cannot be downloaded ({spec.license or 'not redistributable'}). "
                    + (spec.how_to_get
                       or f"Get the file yourself and run `evilbench data fetch {name} --data-dir DIR`.")
                )
            _download(spec.url, tmp_file, progress)
            origin = spec.url
        facts = verify_file(tmp_file, spec)
        meta = {"name": name, "file": spec.file, "origin": origin, **facts}
        os.replace(tmp_file, target_dir / spec.file)
    write_json_atomic(target_dir / "meta.json", meta)
    return target_dir / spec.file


@dataclass(frozen=True)
class ResolvedDataset:
    path: Path
    name: str | None  # registry name, or None for a plain file
    sha256: str
    rows: int


_HASH_CACHE: dict[tuple, str] = {}


def _sha256_cached(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]


def resolve(dataset: str | Path, data_dir: str | Path | None = None) -> ResolvedDataset:
    """A `--dataset` value -> a local file. Paths (anything that exists, or ends in .jsonl) are used as
    they are; registry names come from the cache, imported from `data_dir` first if given."""
    p = Path(dataset).expanduser()
    if p.is_file() or str(dataset).endswith(".jsonl") or os.sep in str(dataset):
        if not p.is_file():
            raise DatasetError(f"dataset file not found: {p}")
        return ResolvedDataset(p.resolve(), None, _sha256_cached(p), count_rows(p))
    name = str(dataset)
    spec = get_spec(name)
    path = cached_path(name)
    if path is None:
        if data_dir is not None:
            path = fetch(name, data_dir, progress=False)
        else:
            how = (f"run `evilbench data fetch {name}`" if spec.redistributable
                   else spec.how_to_get or f"run `evilbench data fetch {name} --data-dir DIR`")
            raise DatasetError(f"dataset {name!r} is not in the cache ({dataset_dir(name)}): {how}")
    sha = _sha256_cached(path)
    meta = json.loads((path.parent / "meta.json").read_text())
    if sha != meta.get("sha256") or (spec.sha256 and sha != spec.sha256):
        raise DatasetError(f"cached {path} changed since it was verified; re-run `evilbench data fetch {name} --force`")
    return ResolvedDataset(path, name, sha, meta["rows"])
