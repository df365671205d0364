"""LoRA SFT runs with checkpoints, spectra and resume.

Public API (lazy; importing this package loads nothing heavy):
  TrainConfig                      every option of a run (the `evilbench train` flags); to_dict/from_dict
  train(config, progress=True, overwrite=False) -> dict   the run.json content (same path as the CLI)
  list_checkpoints(run_dir) -> [(step, adapter_dir)]      each loads with PeftModel.from_pretrained
  ConfigMismatchError              an existing run directory holds a different configuration
  verify_adapter(path) -> sha256   check an adapter directory before loading / evaluating it; raises
                                   CorruptStateError naming the damaged file
  run_status(run_dir) -> str|None  run.json's status, "interrupted" for a "running" run whose process is gone
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "evilbench.train.config",
    "config_diff": "evilbench.train.config",
    "train": "evilbench.train.loop",
    "ConfigMismatchError": "evilbench.train.loop",
    "list_checkpoints": "evilbench.train.rundir",
    "verify_adapter": "evilbench.train.rundir",
    "run_status": "evilbench.train.rundir",
    "CorruptStateError": "evilbench.train.rundir",
    "checkpoint_steps": "evilbench.train.schedule",
    "lr_factor": "evilbench.train.schedule",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
