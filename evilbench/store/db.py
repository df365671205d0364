"""The results store: one SQLite file (WAL) that sweeps write and the leaderboard / analysis read.

Writing: `Store(path).write_run(bundle, origin)` puts one run (its run record, resolved config,
metric trajectory, spectra, evaluations per checkpoint with their per-sample judgments) in ONE
transaction, so a killed writer leaves either the whole run or nothing. Writes are idempotent per
run_key: writing the same content again is a no-op, different content under a known key raises
(results never change silently). The content hash ignores the fields that differ between two
executions of the same run (timestamps, wall and throughput times: VOLATILE; the machine-local paths
of the config: LOCAL_PATHS) and the bookkeeping labels (which sweep, which tuning rule wrote it).
Several processes may write at once: every write
takes SQLite's write lock up front (BEGIN IMMEDIATE) and waits for it (busy timeout).

Reading returns pandas DataFrames: runs_frame, samples_frame, trajectory_frame, metrics_frame,
spectra_frame; get_bundle(run_key) gives back the bundle as written (canonical form)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

from evilbench.store.schema import BUNDLE_SCHEMA_VERSION, MIGRATIONS, SCHEMA_VERSION, V1

ORIGINS = ("reproduced", "submitted")
RUN_COLUMNS = ("model", "model_revision", "dataset", "dataset_sha256", "optimizer", "lr", "regularizer",
               "reg_weight", "batch_size", "seed", "status", "final_loss", "steps", "wall_time_s", "tuning_rule",
               "code_version")
MEASURES = ("stable_rank", "spectral_entropy", "condition_number", "fro_nuclear_ratio")
# Fields that differ between two executions of one run without changing its result.
VOLATILE = frozenset({"wall_time_s", "started_at", "finished_at", "written_at", "elapsed_s", "tokens_per_s",
                      "at", "resumes", "seconds", "created_at", "timestamp", "torch_threads"})
LABELS = frozenset({"tuning_rule", "sweep"})  # bookkeeping: which rule / sweep produced a run
# Machine-local paths of the resolved config (the run key stands for model id + revision and dataset sha256)
LOCAL_PATHS = ("output", "model", "dataset", "data_dir")
BUSY_TIMEOUT_S = 120.0


class StoreError(RuntimeError):
    """A store that cannot be used (newer schema, not a store, a conflicting write, a bad bundle)."""


class EmptyStoreError(StoreError):
    """A store file without any table yet (created, then its writer killed before the schema was in)."""


class ConflictError(StoreError):
    """A run_key already in the store with different content."""


def canonical(obj):
    """JSON-safe canonical form: tuples -> lists, non-finite floats -> None, keys as strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return canonical(obj.item())
    return str(obj)


def _strip(obj, drop):
    if isinstance(obj, dict):
        return {k: _strip(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [_strip(v, drop) for v in obj]
    return obj


def content_sha256(bundle: dict, is_canonical: bool = False) -> str:
    """The hash that decides whether two bundles of one run_key hold the same result (`is_canonical`:
    the bundle is canonical() already, which a large bundle need not pay for twice)."""
    body = _strip(bundle if is_canonical else canonical(bundle), VOLATILE | LABELS)
    if isinstance(body.get("config"), dict):
        body["config"] = {k: v for k, v in body["config"].items() if k not in LOCAL_PATHS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def validate_bundle(bundle: dict) -> None:
    def bad(msg):
        key = f" {bundle.get('run_key')!r}" if isinstance(bundle, dict) else ""
        raise StoreError(f"invalid bundle{key}: {msg}")

    if not isinstance(bundle, dict):
        bad("not a dict")
    if not isinstance(bundle.get("run_key"), str) or not bundle["run_key"]:
        bad("run_key must be a non-empty string")
    if bundle.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        bad(f"schema_version must be {BUNDLE_SCHEMA_VERSION} (got {bundle.get('schema_version')!r})")
    run = bundle.get("run")
    if not isinstance(run, dict):
        bad("'run' must be an object")
    for k in ("model", "optimizer", "status"):
        if k not in run:
            bad(f"run.{k} is missing")
    for name in ("metrics", "spectra", "evals"):
        if not isinstance(bundle.get(name, []), list):
            bad(f"'{name}' must be a list")
    for i, m in enumerate(bundle.get("metrics", [])):
        if not isinstance(m, dict) or not isinstance(m.get("step"), int):
            bad(f"metrics[{i}] needs an integer step")
    seen = set()
    for i, e in enumerate(bundle.get("evals", [])):
        if not isinstance(e, dict) or not isinstance(e.get("step"), int):
            bad(f"evals[{i}] needs an integer step")
        ident = (e["step"], e.get("question_set"), _dumps(e.get("judge") or {}), e.get("convention"))
        if ident in seen:
            bad(f"evals[{i}] repeats step {e['step']} with the same question set, judge and convention")
        seen.add(ident)
        if not isinstance(e.get("summary", {}), dict) or not isinstance(e.get("samples", []), list):
            bad(f"evals[{i}]: summary must be an object and samples a list")
        ids = [s.get("sample_id") for s in e.get("samples", [])]
        if len(ids) != len(set(ids)):
            bad(f"evals[{i}] repeats a sample_id")


def _num(x):
    return None if x is None else float(x)


class Store:
    """A results store at `path` (created with the current schema if it does not exist)."""

    def __init__(self, path: str | os.PathLike, readonly: bool = False):
        self.path = Path(path).expanduser()
        self.readonly = readonly
        if readonly and not self.path.is_file():
            raise StoreError(f"{self.path}: no such store")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = None
        self._open()

    # ------------------------------------------------------------------ connection + schema
    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                                  isolation_level=None, check_same_thread=False)
        else:
            con = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                  check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        con.execute("PRAGMA foreign_keys = ON")
        return con

    def _open(self) -> None:
        try:
            con = self._connect()
            if not self.readonly:
                for _ in range(50):  # switching to WAL needs a moment without other writers
                    try:
                        con.execute("PRAGMA journal_mode = WAL")
                        break
                    except sqlite3.OperationalError:
                        time.sleep(0.1)
                con.execute("PRAGMA synchronous = FULL")
            self._con = con
            self._ensure_schema()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a usable SQLite store ({e})") from None

    def _version(self, con) -> int | None:
        has_meta = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else None

    def _ensure_schema(self) -> None:
        con = self._con
        v = self._version(con)
        if v is not None and v > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {v}; this evilbench reads up to {SCHEMA_VERSION} "
                             "(upgrade evilbench)")
        if v == SCHEMA_VERSION:
            return
        if self.readonly:
            if v is None:
                if not con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise EmptyStoreError(f"{self.path} is an empty store (no schema yet)")
                raise StoreError(f"{self.path} is not an evilbench store (no schema version)")
            raise StoreError(f"{self.path} has schema version {v}; open it writable once to migrate it to "
                             f"{SCHEMA_VERSION}")
        with self._write() as c:
            v = self._version(c)  # again, under the write lock: another process may have done it
            if v is None:
                tables = c.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
                if tables:
                    raise StoreError(f"{self.path} is an SQLite file but not an evilbench store")
                for stmt in V1.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
                c.execute("INSERT INTO meta(key, value) VALUES ('created_at', ?)", (_now(),))
                v = 1
            while v < SCHEMA_VERSION:
                MIGRATIONS[v](c)
                v += 1
                c.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(v),))
                c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"migrated_to_{v}", _now()))

    @contextmanager
    def _write(self):
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        else:
            con.execute("COMMIT")

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def schema_version(self) -> int:
        return self._version(self._con)

    # ------------------------------------------------------------------ writing
    def write_run(self, bundle: dict, origin: str = "reproduced", sweep: str | None = None,
                  replace: bool = False) -> bool:
        """Store one run in one transaction. True if written, False if the same content was already
        there (no-op); ConflictError if the run_key holds different content, unless `replace` (the
        sweep completing a run whose sampled evaluation was deferred): then the old rows go and the new
        ones come in the same transaction."""
        if origin not in ORIGINS:
            raise StoreError(f"origin must be one of {ORIGINS} (got {origin!r})")
        validate_bundle(bundle)
        b = canonical(bundle)
        key, digest = b["run_key"], content_sha256(b, is_canonical=True)
        run = b["run"]
        with self._write() as c:
            row = c.execute("SELECT content_sha256, origin FROM runs WHERE run_key=?", (key,)).fetchone()
            if row is not None and replace and row[0] != digest:
                self._delete(c, key)
            elif row is not None:
                if row[0] == digest and row[1] == origin:
                    return False
                what = "content" if row[0] != digest else f"origin ({row[1]} vs {origin})"
                raise ConflictError(f"run {key} is already in {self.path} with different {what}; "
                                    "delete it first (evilbench store delete) to replace it")
            c.execute(
                f"INSERT INTO runs(run_key, origin, content_sha256, bundle_schema, written_at, "
                f"{', '.join(RUN_COLUMNS)}, run_json, sweep) VALUES (?, ?, ?, ?, ?, "
                f"{', '.join('?' * len(RUN_COLUMNS))}, ?, ?)",
                (key, origin, digest, b["schema_version"], _now(),
                 *[_dumps(run.get(k)) if isinstance(run.get(k), (dict, list)) else run.get(k) for k in RUN_COLUMNS],
                 _dumps(run), sweep))
            c.execute("INSERT INTO configs(run_key, config_json) VALUES (?, ?)", (key, _dumps(b.get("config") or {})))
            c.execute("INSERT INTO bundles(run_key, bundle_zlib) VALUES (?, ?)",
                      (key, zlib.compress(_dumps(b).encode(), 6)))
            c.executemany(
                "INSERT INTO metrics(run_key, step, loss, lr, penalty, grad_norm, extra_json) VALUES (?,?,?,?,?,?,?)",
                [(key, m["step"], _num(m.get("loss")), _num(m.get("lr")), _num(m.get("penalty")),
                  _num(m.get("grad_norm")),
                  _dumps({k: v for k, v in m.items() if k not in ("step", "loss", "lr", "penalty", "grad_norm")}))
                 for m in b.get("metrics", [])])
            c.executemany(
                f"INSERT INTO spectra(run_key, step, module, {', '.join(MEASURES)}) VALUES (?,?,?,?,?,?,?)",
                [(key, s["step"], s["module"], *[_num(s.get(m)) for m in MEASURES]) for s in b.get("spectra", [])])
            for e in b.get("evals", []):
                judge = e.get("judge") or {}
                cur = c.execute(
                    "INSERT INTO evals(run_key, step, is_final, question_set, question_set_sha256, judge_json, "
                    "judge_model, convention, summary_json, n_samples, judgments_ref, judgments_sha256, scores_json) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (key, e["step"], int(bool(e.get("is_final"))), e.get("question_set"), e.get("question_set_sha256"),
                     _dumps(judge), judge.get("model"), e.get("convention"), _dumps(e.get("summary") or {}),
                     len(e.get("samples", [])), e.get("judgments_ref"), e.get("judgments_sha256"),
                     _dumps(e["scores"]) if e.get("scores") is not None else None))
                eid = cur.lastrowid
                c.executemany(
                    "INSERT INTO samples(eval_id, sample_id, question_id, answer_chars, aligned, coherent, verdict, "
                    "raw_aligned, raw_coherent) VALUES (?,?,?,?,?,?,?,?,?)",
                    [(eid, s["sample_id"], s.get("question_id"), s.get("answer_chars"), _num(s.get("aligned")),
                      _num(s.get("coherent")), s.get("verdict"),
                      None if s.get("raw_aligned") is None else _dumps(s["raw_aligned"]),
                      None if s.get("raw_coherent") is None else _dumps(s["raw_coherent"]))
                     for s in e.get("samples", [])])
        return True

    def delete_run(self, run_key: str) -> bool:
        """Remove a run and everything that belongs to it (one transaction). True if it was there."""
        with self._write() as c:
            return self._delete(c, run_key)

    @staticmethod
    def _delete(c, run_key: str) -> bool:
        ids = [r[0] for r in c.execute("SELECT eval_id FROM evals WHERE run_key=?", (run_key,))]
        c.executemany("DELETE FROM samples WHERE eval_id=?", [(i,) for i in ids])
        for table in ("evals", "metrics", "spectra", "configs", "bundles"):
            c.execute(f"DELETE FROM {table} WHERE run_key=?", (run_key,))
        return c.execute("DELETE FROM runs WHERE run_key=?", (run_key,)).rowcount > 0

    def set_meta(self, key: str, value) -> None:
        """Record a JSON value under `key` (e.g. a sweep's lr choices), replacing an earlier one."""
        if key in ("schema_version", "created_at") or key.startswith("migrated_to_"):
            raise StoreError(f"meta key {key!r} is reserved")
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(canonical(value))))

    def get_meta(self, prefix: str = "") -> dict:
        """{key: JSON value} of the recorded meta keys starting with `prefix` (not the schema's own)."""
        out = {}
        for k, v in self._con.execute("SELECT key, value FROM meta WHERE key LIKE ? ORDER BY key", (prefix + "%",)):
            if k in ("schema_version", "created_at") or k.startswith("migrated_to_"):
                continue
            out[k] = json.loads(v)
        return out

    # ------------------------------------------------------------------ reading
    def run_keys(self, status: str | None = None) -> list[str]:
        q, args = "SELECT run_key FROM runs", ()
        if status is not None:
            q, args = q + " WHERE status=?", (status,)
        return [r[0] for r in self._con.execute(q + " ORDER BY run_key", args)]

    def statuses(self) -> dict[str, str]:
        return dict(self._con.execute("SELECT run_key, status FROM runs"))

    def deferred_run_keys(self) -> set[str]:
        """Runs stored without their sampled evaluation (a tuning rule's calibration candidates: the
        sweep completes the one it chooses)."""
        return {k for (k,) in self._con.execute(
            "SELECT run_key FROM runs WHERE json_extract(run_json, '$.sampled_eval') = 'deferred'")}

    def has_run(self, run_key: str) -> bool:
        return self._con.execute("SELECT 1 FROM runs WHERE run_key=?", (run_key,)).fetchone() is not None

    def get_bundle(self, run_key: str) -> dict | None:
        row = self._con.execute("SELECT bundle_zlib FROM bundles WHERE run_key=?", (run_key,)).fetchone()
        return None if row is None else json.loads(zlib.decompress(row[0]))

    def get_run(self, run_key: str) -> dict | None:
        row = self._con.execute("SELECT run_json, origin, written_at FROM runs WHERE run_key=?", (run_key,)).fetchone()
        return None if row is None else {**json.loads(row[0]), "run_key": run_key, "origin": row[1],
                                          "written_at": row[2]}

    def _frame(self, sql: str, args=()):
        import pandas as pd

        cur = self._con.execute(sql, args)
        cols = [d[0] for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)

    def runs_frame(self):
        """One row per run: run_key, origin, written_at, sweep and every field of bundle["run"]."""
        import pandas as pd

        rows = []
        for key, origin, written, sweep, run_json in self._con.execute(
                "SELECT run_key, origin, written_at, sweep, run_json FROM runs ORDER BY run_key"):
            rows.append({"run_key": key, "origin": origin, **json.loads(run_json), "written_at": written,
                         "sweep": sweep})
        cols = ["run_key", "origin", *RUN_COLUMNS, "optimizer_kwargs", "versions", "written_at", "sweep"]
        df = pd.DataFrame(rows)
        for c in cols:
            if c not in df.columns:
                df[c] = None
        rest = [c for c in df.columns if c not in cols]
        return df[cols + rest]

    def samples_frame(self, step: str | int | None = "final"):
        """One row per judged sample. step: "final" (the final evaluations), an int (that checkpoint
        step) or None / "all" (every evaluation)."""
        where, args = "", ()
        if step == "final":
            where = "WHERE e.is_final = 1"
        elif step not in (None, "all"):
            where, args = "WHERE e.step = ?", (int(step),)
        df = self._frame(
            "SELECT r.run_key, r.origin, r.model, r.dataset, r.optimizer, r.regularizer, r.reg_weight, r.lr, "
            "r.batch_size, r.seed, e.step, e.is_final, e.question_set, e.question_set_sha256, e.judge_json AS judge, "
            "e.judge_model, e.convention, s.question_id, s.sample_id, s.aligned, s.coherent, s.verdict, s.answer_chars "
            "FROM samples s JOIN evals e ON s.eval_id = e.eval_id JOIN runs r ON e.run_key = r.run_key "
            f"{where} ORDER BY r.run_key, e.step, e.eval_id, s.sample_id", args)
        df["is_final"] = df["is_final"].astype(bool)
        return df

    def evals_frame(self):
        """One row per evaluation: run_key, step, is_final, question_set, judge, convention, the summary's
        overall numbers (misaligned_rate, mean_aligned, coherent_rate, n_samples, n_included, CI ends) and
        any auxiliary scores (scores_*)."""
        import pandas as pd

        rows = []
        for key, step, fin, qs, judge, jm, conv, summ, scores, n in self._con.execute(
                "SELECT run_key, step, is_final, question_set, judge_json, judge_model, convention, summary_json, "
                "scores_json, n_samples FROM evals ORDER BY run_key, step, eval_id"):
            overall = (json.loads(summ) or {}).get("overall") or {}
            row = {"run_key": key, "step": step, "is_final": bool(fin), "question_set": qs, "judge": judge,
                   "judge_model": jm, "convention": conv, "n_samples": n}
            for k in ("misaligned_rate", "mean_aligned", "coherent_rate", "n_included"):
                row[k] = overall.get(k)
            for k, v in (overall.get("ci") or {}).items():
                if isinstance(v, list) and len(v) == 2:
                    row[f"{k}_lo"], row[f"{k}_hi"] = v
            for k, v in (json.loads(scores) if scores else {}).items():
                if isinstance(v, (int, float)) or v is None:
                    row[f"scores_{k}"] = v
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else ["run_key", "step", "is_final", "question_set", "judge",
                                                              "judge_model", "convention", "n_samples",
                                                              "misaligned_rate", "mean_aligned", "coherent_rate"])

    def metrics_frame(self):
        """The logged training metrics: run_key, step, loss, lr, penalty, grad_norm."""
        return self._frame("SELECT run_key, step, loss, lr, penalty, grad_norm FROM metrics ORDER BY run_key, step")

    def trajectory_frame(self):
        """One row per evaluated checkpoint: run_key, step, loss (the training loss logged at that step;
        NaN at step 0, the base), is_final, and the evaluation's summary columns (misaligned_rate,
        mean_aligned, coherent_rate for the stored convention) plus auxiliary scores (scores_*)."""
        ev = self.evals_frame()
        m = self.metrics_frame()[["run_key", "step", "loss"]]
        if ev.empty:
            return ev.assign(loss=[])
        df = ev.merge(m, on=["run_key", "step"], how="left")
        front = ["run_key", "step", "loss"]
        df = df[front + [c for c in df.columns if c not in front]]
        return df.sort_values(["run_key", "step"]).reset_index(drop=True)

    def spectra_frame(self):
        """run_key, step, module and the four measures, one row per LoRA module and checkpoint."""
        cols = ", ".join(MEASURES)
        return self._frame(f"SELECT run_key, step, module, {cols} FROM spectra ORDER BY run_key, step, module")

    def counts(self) -> dict:
        out = {}
        for t in ("runs", "configs", "bundles", "metrics", "spectra", "evals", "samples"):
            out[t] = self._con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
