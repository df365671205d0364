"""The results store (SQLite, WAL): runs, configs, metric trajectories, spectra, evaluations per
checkpoint and per-sample judgments, written one run per transaction and read as DataFrames.

Public API (lazy):
  Store(path)            write_run(bundle, origin), delete_run, runs_frame, samples_frame,
                         trajectory_frame, evals_frame, metrics_frame, spectra_frame, get_bundle
  check_store(store)     integrity check (`evilbench store check`)
  export_store(store, out, fmt)   every frame as CSV or Parquet (`evilbench store export`)
  SCHEMA_VERSION, BUNDLE_SCHEMA_VERSION, StoreError, ConflictError, content_sha256
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "Store": "evilbench.store.db",
    "StoreError": "evilbench.store.db",
    "ConflictError": "evilbench.store.db",
    "content_sha256": "evilbench.store.db",
    "check_store": "evilbench.store.check",
    "export_store": "evilbench.store.export",
    "SCHEMA_VERSION": "evilbench.store.schema",
    "BUNDLE_SCHEMA_VERSION": "evilbench.store.schema",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
