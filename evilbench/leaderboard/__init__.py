"""The optimiser × regulariser leaderboard over a results store, its page, and submissions.

Public API (lazy; importing this package loads nothing heavy):
  Frames.from_store(store), build(frames, convention=, metric=, ...) -> Leaderboard   ranking.py
  cluster_bootstrap(num, den, seed_present, ...)                                     bootstrap.py
  format_plain(lb), print_rich(lb), render_html(lb, out_dir)                         render.py
  validate(path, store=None), ingest(path, store_path), create(store, run_keys)      submission.py
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "Frames": "evilbench.leaderboard.ranking",
    "Leaderboard": "evilbench.leaderboard.ranking",
    "build": "evilbench.leaderboard.ranking",
    "cluster_bootstrap": "evilbench.leaderboard.bootstrap",
    "format_plain": "evilbench.leaderboard.render",
    "print_rich": "evilbench.leaderboard.render",
    "render_html": "evilbench.leaderboard.render",
    "SubmissionError": "evilbench.leaderboard.submission",
    "validate": "evilbench.leaderboard.submission",
    "ingest": "evilbench.leaderboard.submission",
    "create": "evilbench.leaderboard.submission",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
