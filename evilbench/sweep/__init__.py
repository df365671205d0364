"""Sweeps: grid specs (YAML), stable run keys, executors (local processes, Ray, submitit / Slurm), and
the runner that trains, evaluates and writes every run to the results store once. See docs/sweep.md.

Public API (lazy):
  load_spec(path_or_preset), parse_spec(dict)  SweepSpec           spec.py
  Runner(spec, store=, workdir=, executor=)    plan / run / status  runner.py
  run_key(...), bundle_from_run_dir(dir), read_run_dir(dir)        bundle.py
  TUNING_RULES, SCORERS                                            tuning.py, evaluation.py
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "load_spec": "evilbench.sweep.spec",
    "parse_spec": "evilbench.sweep.spec",
    "SweepSpec": "evilbench.sweep.spec",
    "SpecError": "evilbench.sweep.spec",
    "Runner": "evilbench.sweep.runner",
    "run_key": "evilbench.sweep.bundle",
    "bundle_from_run_dir": "evilbench.sweep.bundle",
    "read_run_dir": "evilbench.sweep.bundle",
    "TUNING_RULES": "evilbench.sweep.tuning",
    "SCORERS": "evilbench.sweep.evaluation",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
