"""Export every frame of a store as CSV or Parquet files (one file per frame)."""
from __future__ import annotations

import json
from pathlib import Path

from evilbench.store.db import Store

FRAMES = ("runs", "evals", "trajectory", "metrics", "spectra", "samples")


def _flat(df):
    """Dict / list cells (optimizer_kwargs, versions) as JSON strings: CSV and Parquet need scalars."""
    for c in df.columns:
        if df[c].map(lambda v: isinstance(v, (dict, list))).any():
            df[c] = df[c].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
    return df


def export_store(store: Store, out: str | Path, fmt: str = "csv", frames=FRAMES) -> list[Path]:
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be csv or parquet (got {fmt!r})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in frames:
        df = getattr(store, f"{name}_frame")(**({"step": "all"} if name == "samples" else {}))
        df = _flat(df)
        path = out / f"{name}.{fmt}"
        tmp = path.with_name(f".{path.name}.tmp")
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        tmp.replace(path)
        paths.append(path)
    return paths
