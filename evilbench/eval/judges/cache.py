"""On-disk cache of judge calls: SQLite in WAL mode, safe with several writer processes.

Key: sha256 over the canonical JSON of (judge identity, judge prompt template sha256, rendered judge
prompt, decoding parameters). The identity used in the key is what is known before a call (spec,
model, base URL, read-out, and for local judges the weights' fingerprint); the snapshot an API
reports comes back with the response and is stored in the value. Value: JSON with the raw top
logprobs (or candidate distribution), the snapshot and the token usage of the original call, so a
re-run makes no call and recomputes identical numbers from the stored raw read-out.

Default file: <evilbench cache>/judge-cache.sqlite ($EVILBENCH_CACHE or ~/.cache/evilbench);
EVILBENCH_JUDGE_CACHE overrides it."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from evilbench.data.cache import cache_root

BUSY_TIMEOUT_MS = 60_000
_SCHEMA = """CREATE TABLE IF NOT EXISTS judge_cache (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created REAL NOT NULL
)"""


def default_cache_path() -> Path:
    env = os.environ.get("EVILBENCH_JUDGE_CACHE")
    return Path(env).expanduser() if env else cache_root() / "judge-cache.sqlite"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def cache_key(identity: dict, template_sha256: str, prompt: str, decoding: dict) -> str:
    blob = canonical_json({"identity": identity, "template_sha256": template_sha256, "prompt": prompt,
                           "decoding": decoding})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """get / put of JSON values by key. One connection per process, shared across threads under a
    lock; writers in other processes wait on SQLite's busy timeout (WAL lets readers go on)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                                     isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._retry(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._retry(lambda: self._conn.execute(_SCHEMA))

    @staticmethod
    def _retry(fn, attempts: int = 50):
        # journal-mode switches and schema creation can report "locked" without honouring the busy
        # timeout while another process creates the same file; a few short waits settle it
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or i == attempts - 1:
                    raise
                time.sleep(0.05 * (i + 1))

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM judge_cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, value FROM judge_cache WHERE key IN ({','.join('?' * len(chunk))})"
                for k, v in self._conn.execute(q, chunk):
                    out[k] = json.loads(v)
        return out

    def put(self, key: str, value: dict) -> None:
        """First write wins (a concurrent writer of the same key stored the same call's result)."""
        blob = canonical_json(value)
        with self._lock:
            self._retry(lambda: self._conn.execute(
                "INSERT OR IGNORE INTO judge_cache (key, value, created) VALUES (?, ?, ?)", (key, blob, time.time())))

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"


def open_cache(cache: JudgeCache | str | os.PathLike | bool | None) -> JudgeCache | None:
    """`cache` option of the judges: None/True -> the default file, False -> no cache, a path, or a
    JudgeCache."""
    if cache is False:
        return None
    if isinstance(cache, JudgeCache):
        return cache
    if cache is None or cache is True:
        return JudgeCache()
    return JudgeCache(cache)
