"""`evilbench submission create|validate` (the implementation lives in leaderboard/cli.py)."""
from __future__ import annotations

from evilbench.leaderboard.cli import register_submission as register

__all__ = ["register"]
