"""Analysis of a results store: per-run metrics from checkpoint trajectories, cell aggregates with
cluster-bootstrap CIs, alignment on log final loss (R², optimiser-stratified adjusted R²), alignment
at matched training loss, EM over training with the first-fit point, spectra per optimiser, the
regulariser effect; CSV tables, a markdown summary and PNG plots (`evilbench analyze`).

Public API (lazy): analyze(store, out_dir, Options(...)), Options, run_table, cluster_bootstrap, ols."""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "analyze": "evilbench.analysis.report",
    "render": "evilbench.analysis.report",
    "Options": "evilbench.analysis.core",
    "run_table": "evilbench.analysis.core",
    "cluster_bootstrap": "evilbench.analysis.stats",
    "ols": "evilbench.analysis.stats",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
