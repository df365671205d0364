"""The results store's SQLite schema, its version and the migrations between versions.

SCHEMA_VERSION is stored in `meta` (key "schema_version"). Opening an older store applies every
migration from its version up, each in the same transaction as the version bump; a store newer than
this code is refused (an old reader must not write rows it does not understand)."""
from __future__ import annotations

SCHEMA_VERSION = 2
BUNDLE_SCHEMA_VERSION = 1  # the bundle format (the dict handed to Store.write_run)

# Version 1: runs, configs, the full bundle, metric trajectories, spectra, eval summaries per
# checkpoint, per-sample judgments.
V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    origin TEXT NOT NULL CHECK (origin IN ('reproduced', 'submitted')),
    content_sha256 TEXT NOT NULL,
    bundle_schema INTEGER NOT NULL,
    written_at TEXT NOT NULL,
    model TEXT, model_revision TEXT, dataset TEXT, dataset_sha256 TEXT, optimizer TEXT, lr REAL,
    regularizer TEXT, reg_weight REAL, batch_size INTEGER, seed INTEGER, status TEXT, final_loss REAL,
    steps INTEGER, wall_time_s REAL, tuning_rule TEXT, code_version TEXT,
    run_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS configs (
    run_key TEXT PRIMARY KEY REFERENCES runs(run_key) ON DELETE CASCADE,
    config_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bundles (
    run_key TEXT PRIMARY KEY REFERENCES runs(run_key) ON DELETE CASCADE,
    bundle_zlib BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_key TEXT NOT NULL REFERENCES runs(run_key) ON DELETE CASCADE,
    step INTEGER NOT NULL, loss REAL, lr REAL, penalty REAL, grad_norm REAL, extra_json TEXT,
    PRIMARY KEY (run_key, step)
);
CREATE TABLE IF NOT EXISTS spectra (
    run_key TEXT NOT NULL REFERENCES runs(run_key) ON DELETE CASCADE,
    step INTEGER NOT NULL, module TEXT NOT NULL,
    stable_rank REAL, spectral_entropy REAL, condition_number REAL, fro_nuclear_ratio REAL,
    PRIMARY KEY (run_key, step, module)
);
CREATE TABLE IF NOT EXISTS evals (
    eval_id INTEGER PRIMARY KEY,
    run_key TEXT NOT NULL REFERENCES runs(run_key) ON DELETE CASCADE,
    step INTEGER NOT NULL, is_final INTEGER NOT NULL,
    question_set TEXT, question_set_sha256 TEXT, judge_json TEXT NOT NULL, judge_model TEXT,
    convention TEXT, summary_json TEXT NOT NULL, n_samples INTEGER NOT NULL,
    judgments_ref TEXT, judgments_sha256 TEXT,
    UNIQUE (run_key, step, question_set, judge_json, convention)
);
CREATE TABLE IF NOT EXISTS samples (
    eval_id INTEGER NOT NULL REFERENCES evals(eval_id) ON DELETE CASCADE,
    sample_id TEXT NOT NULL, question_id TEXT, answer_chars INTEGER,
    aligned REAL, coherent REAL, verdict TEXT, raw_aligned TEXT, raw_coherent TEXT,
    PRIMARY KEY (eval_id, sample_id)
);
CREATE INDEX IF NOT EXISTS evals_by_run ON evals(run_key, step);
"""


def _v1_to_v2(con) -> None:
    """Version 2: evaluations may carry auxiliary exact scores (e.g. the toy world's exact judge) next
    to the sampled summary; runs remember the sweep that produced them."""
    con.execute("ALTER TABLE evals ADD COLUMN scores_json TEXT")
    con.execute("ALTER TABLE runs ADD COLUMN sweep TEXT")
    con.execute("CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs(sweep)")


# from-version -> function migrating one version up (run inside the caller's transaction)
MIGRATIONS = {1: _v1_to_v2}
