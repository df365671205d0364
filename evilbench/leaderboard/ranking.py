"""The optimiser × regulariser leaderboard over a results store.

Rules (what makes the comparison fair):
- A cell is one optimiser with one regulariser (kind and weight). A workload is one model × dataset ×
  batch size. Within a cell and workload, when the store holds several learning rates, one is kept:
  the one with the most seeds (a tuning rule's choice: its other candidates ran one seed), then the
  lowest mean final training loss over seeds (chosen by task loss, never by the EM score).
- Control datasets (registry kind "control", toy-world aligned sets) are left out unless asked for.
- Per-sample raw judge scores are classified here with `eval.scoring.classify` under the requested
  convention. Per seed: misaligned rate = misaligned / included samples, mean alignment = mean of the
  included alignment values. Then the mean over seeds (per model × dataset), then the mean over the
  workloads a cell covers. A missing workload is reported missing, never imputed.
- 95 % intervals: two-way cluster bootstrap over seeds and questions (`bootstrap.py`). Cell i is
  significantly better than j when the interval of their difference over the workloads both cover
  excludes zero; rank = 1 + the number of cells significantly better (equal ranks are ties).
- Side columns: final training loss, training-loss cost of the regulariser (vs the same optimiser
  unregularised, over common workloads, matched by seed), alignment at matched training loss (from
  checkpoint trajectories: per workload the loss every run reaches, each run interpolated there),
  adapter flatness (mean Fro/nuclear ratio over modules at the last spectra step), coverage.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evilbench.errors import UserError
from evilbench.leaderboard.bootstrap import BootstrapResult, cluster_bootstrap

METRICS = {  # metric -> (column, higher is better, label)
    "misaligned_rate": ("misaligned_rate", False, "misaligned rate"),
    "mean_aligned": ("mean_aligned", True, "mean alignment"),
}
WORKLOAD = ["model", "dataset", "batch_size"]


@dataclass
class Frames:
    """The store's frames the leaderboard reads (see evilbench.store.Store)."""
    samples: pd.DataFrame
    runs: pd.DataFrame
    trajectory: pd.DataFrame | None = None     # run_key, step, loss (+ the stored summary columns)
    spectra: pd.DataFrame | None = None
    samples_all: pd.DataFrame | None = None    # samples of every evaluated checkpoint (matched loss)

    @classmethod
    def from_store(cls, store) -> Frames:
        return cls(samples=store.samples_frame(step="final"), runs=store.runs_frame(),
                   trajectory=store.trajectory_frame(), spectra=store.spectra_frame(),
                   samples_all=store.samples_frame(step=None))


@dataclass
class Leaderboard:
    header: dict[str, Any]
    table: pd.DataFrame                   # one row per cell, sorted by rank
    breakdown: pd.DataFrame               # cell × (model, dataset, batch_size) point estimates (NaN: missing)
    ran: pd.DataFrame                     # same shape: True where runs exist (NaN there: no included sample)
    per_model: pd.DataFrame               # cell × model (metric, mean over that model's datasets)
    pairwise: pd.DataFrame                # i, j, diff, lo, hi, n_common, better (i significantly better than j)
    points: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-run loss vs alignment (for plots)
    spectra: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-run spectra at the last step

    def to_dict(self) -> dict:
        return {"header": self.header, "rows": json.loads(self.table.to_json(orient="records"))}


def regularizer_label(kind: Any, weight: Any) -> str:
    if kind is None or (isinstance(kind, float) and np.isnan(kind)) or str(kind) in ("", "none"):
        return "none"
    try:
        w = float(weight)
    except (TypeError, ValueError):
        w = float("nan")
    return f"{kind}" if not np.isfinite(w) else f"{kind} ({w:g})"


def _classify_frame(samples: pd.DataFrame, convention: str) -> pd.DataFrame:
    from evilbench.eval.scoring import CONVENTIONS, classify

    CONVENTIONS.get(convention)  # raises UnknownNameError listing the known conventions
    out = samples.copy()

    def _num(x):
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)

    def _str(x):
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else str(x)

    # classify each distinct (aligned, coherent, verdict) once: exact judges give a handful of them
    keys = out[["aligned", "coherent", "verdict"]].astype(object).where(out[["aligned", "coherent", "verdict"]].notna())
    codes, uniques = pd.MultiIndex.from_frame(keys.fillna("\0nan")).factorize()
    inc = np.zeros(len(uniques), bool)
    mis = np.zeros(len(uniques), bool)
    val = np.full(len(uniques), np.nan)
    for k, (a, c, v) in enumerate(uniques):
        a, c, v = (None if x == "\0nan" else x for x in (a, c, v))
        o = classify(_num(a), _num(c), _str(v), convention)
        inc[k] = bool(o.included)
        mis[k] = bool(o.included and o.misaligned)
        val[k] = o.aligned_value if o.included and o.aligned_value is not None else np.nan
    out["included"] = inc[codes]
    out["is_misaligned"] = mis[codes]
    out["aligned_value"] = val[codes]
    return out


def _pick(samples: pd.DataFrame, question_set: str | None, judge: str | None) -> tuple[pd.DataFrame, dict]:
    """Keep one question set and one judge (the given ones, or the most common pair by samples)."""
    if samples.empty:
        raise UserError("the store holds no judged samples at the final step")
    s = samples
    if question_set is not None:
        s = s[(s["question_set"] == question_set) | (s["question_set_sha256"] == question_set)]
        if s.empty:
            raise UserError(f"no samples for question set {question_set!r}; in the store: "
                            f"{', '.join(sorted(set(samples['question_set'].astype(str))))}")
    if judge is not None:
        j = s["judge_model"].astype(str).eq(judge) | s["judge"].astype(str).str.contains(judge, regex=False)
        s = s[j]
        if s.empty:
            raise UserError(f"no samples judged by {judge!r}; judges in the store: "
                            f"{', '.join(sorted(set(samples['judge_model'].astype(str))))}")
    counts = s.groupby(["question_set_sha256", "judge"], dropna=False).size().sort_values(ascending=False)
    qs_sha, judge_json = counts.index[0]
    picked = s[(s["question_set_sha256"] == qs_sha) & (s["judge"] == judge_json)]
    others = [f"{q}/{json.loads(jj).get('model', jj) if isinstance(jj, str) else jj}"
              for (q, jj) in counts.index[1:]]
    try:
        ident = json.loads(judge_json)
    except (TypeError, ValueError):
        ident = {"spec": str(judge_json)}
    info = {"question_set": {"name": str(picked["question_set"].iloc[0]), "sha256": str(qs_sha)},
            "judge": ident, "judge_json": judge_json, "not_shown": others}
    return picked, info


def is_control(dataset: Any) -> bool:
    """A control dataset (the registry's kind "control", or a toy world's aligned set): its runs
    measure the fine-tuning itself, not the narrow misaligned task, and stay off the ranking."""
    name = str(dataset)
    if name.startswith("toyworld:"):
        return name.endswith("-aligned")
    try:
        from evilbench.data.registry import registry

        spec = registry().get(name)
    except Exception:  # noqa: BLE001 - an unreadable registry: nothing is known as a control
        return False
    return spec is not None and spec.kind == "control"


def _select_lr(runs: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Per cell × workload keep one lr: the one with the most runs (a sweep's tuning rule leaves its
    other calibration candidates in the store with one seed each, while the chosen lr runs every
    seed), then the lowest mean final training loss over seeds, then the smaller lr. Never the EM."""
    keys = ["cell"] + WORKLOAD
    lrs = runs.groupby(keys, dropna=False)["lr"].nunique()
    if (lrs <= 1).all():
        return runs, False
    per = (runs.groupby(keys + ["lr"], dropna=False)
           .agg(n=("run_key", "size"), loss=("final_loss", "mean")).reset_index())
    per["loss"] = per["loss"].fillna(np.inf)
    per["neg_n"] = -per["n"]
    best = per.sort_values(keys + ["neg_n", "loss", "lr"]).groupby(keys, dropna=False).head(1)
    kept = runs.merge(best[keys + ["lr"]], on=keys + ["lr"], how="inner")
    return kept, True


def _agg_seeds_then_workloads(df: pd.DataFrame, value: str, cells: list[str],
                              workloads: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """(C,) and (C, W) means of a per-run column: over seeds, then over workloads present."""
    wl_index = {w: i for i, w in enumerate(workloads)}
    cw = np.full((len(cells), len(workloads)), np.nan)
    d = df.dropna(subset=[value])
    if not d.empty:
        g = d.groupby(["cell"] + WORKLOAD, dropna=False)[value].mean()
        for key, v in g.items():
            c, w = key[0], tuple(key[1:])
            if c in cells and w in wl_index:
                cw[cells.index(c), wl_index[w]] = v
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            cell = np.nanmean(cw, axis=1)
    return cell, cw


def _matched_loss(traj: pd.DataFrame, runs: pd.DataFrame, column: str) -> pd.Series:
    """Per run: `column` interpolated at the workload's matched loss (the highest of the runs' lowest
    checkpoint losses, so every run of the workload reaches it), in log loss between checkpoints."""
    t = traj.dropna(subset=["loss", column])
    t = t[t["loss"] > 0]
    if t.empty:
        return pd.Series(dtype=float)
    t = t.merge(runs[["run_key"] + WORKLOAD], on="run_key", how="inner").sort_values(["run_key", "step"])
    out = {}
    for _, wl in t.groupby(WORKLOAD, dropna=False):
        target = wl.groupby("run_key")["loss"].min().max()
        for rk, r in wl.groupby("run_key"):
            loss = r["loss"].to_numpy(float)
            val = r[column].to_numpy(float)
            idx = int(np.argmax(loss <= target + 1e-12))
            if idx == 0:
                out[rk] = val[0]
            else:
                l0, l1 = np.log(loss[idx - 1]), np.log(loss[idx])
                f = 0.0 if l0 == l1 else (l0 - np.log(target)) / (l0 - l1)
                out[rk] = val[idx - 1] + f * (val[idx] - val[idx - 1])
    return pd.Series(out, dtype=float)


def build(frames: Frames, *, convention: str = "paper", metric: str = "misaligned_rate",
          question_set: str | None = None, judge: str | None = None, n_boot: int = 1000,
          level: float = 0.95, seed: int = 0, include_controls: bool = False) -> Leaderboard:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    mcol, higher_better, mlabel = METRICS[metric]
    samples, info = _pick(frames.samples, question_set, judge)
    runs = frames.runs.copy()
    runs["cell_optimizer"] = runs["optimizer"].astype(str)
    runs["cell_regularizer"] = [regularizer_label(k, w) for k, w in zip(runs["regularizer"], runs["reg_weight"])]
    runs["cell"] = runs["cell_optimizer"] + " × " + runs["cell_regularizer"]
    runs = runs[runs["run_key"].isin(set(samples["run_key"]))]
    controls = sorted({str(d) for d in runs["dataset"].unique() if is_control(d)})
    if controls and not include_controls:
        runs = runs[~runs["dataset"].astype(str).isin(controls)]
        if runs.empty:
            raise UserError(f"only control datasets ({', '.join(controls)}) hold runs; pass include_controls")
    runs, lr_tuned = _select_lr(runs)
    samples = samples[samples["run_key"].isin(set(runs["run_key"]))]
    samples = samples.merge(runs[["run_key", "cell"]], on="run_key", how="left")
    samples = _classify_frame(samples, convention)

    cells = sorted(runs["cell"].unique().tolist())
    wl = runs[WORKLOAD].drop_duplicates().sort_values(WORKLOAD)
    workloads = [tuple(x) for x in wl.itertuples(index=False, name=None)]
    questions = sorted(samples["question_id"].astype(str).unique().tolist())
    C, W, Q = len(cells), len(workloads), len(questions)
    # seed slots packed per (cell, workload)
    runs = runs.sort_values(["cell"] + WORKLOAD + ["seed", "run_key"])
    runs["slot"] = runs.groupby(["cell"] + WORKLOAD, dropna=False).cumcount()
    S = int(runs["slot"].max()) + 1
    ci_, wi_ = {c: i for i, c in enumerate(cells)}, {w: i for i, w in enumerate(workloads)}
    qi_ = {q: i for i, q in enumerate(questions)}
    runs["ci"] = runs["cell"].map(ci_)
    runs["wi"] = [wi_[tuple(x)] for x in runs[WORKLOAD].itertuples(index=False, name=None)]
    present = np.zeros((C, W, S), bool)
    present[runs["ci"], runs["wi"], runs["slot"]] = True

    pos = samples[["run_key"]].merge(runs[["run_key", "ci", "wi", "slot"]], on="run_key", how="left")
    c_, w_, s_ = pos["ci"].to_numpy(int), pos["wi"].to_numpy(int), pos["slot"].to_numpy(int)
    q_ = samples["question_id"].astype(str).map(qi_).to_numpy(int)
    inc = samples["included"].to_numpy(bool)
    has_val = inc & np.isfinite(samples["aligned_value"].to_numpy(float))
    arrays = {}
    for name, weights in (("n", inc), ("m", samples["is_misaligned"].to_numpy(bool) & inc),
                          ("a", np.where(has_val, samples["aligned_value"].to_numpy(float), 0.0)),
                          ("na", has_val)):
        arr = np.zeros((C, W, S, Q))
        np.add.at(arr, (c_, w_, s_, q_), np.asarray(weights, dtype=float))
        arrays[name] = arr
    boot_mis = cluster_bootstrap(arrays["m"], arrays["n"], present, n_boot=n_boot, level=level, seed=seed)
    boot_al = cluster_bootstrap(arrays["a"], arrays["na"], present, n_boot=n_boot, level=level, seed=seed)
    boot: BootstrapResult = boot_mis if metric == "misaligned_rate" else boot_al

    # CI-aware rank
    pair_rows = []
    better_count = np.zeros(C, int)
    for i in range(C):
        for j in range(C):
            if i == j:
                continue
            est, lo, hi, n = boot.diff_ci(i, j)
            sig = bool(n > 0 and ((lo > 0) if higher_better else (hi < 0)))
            pair_rows.append({"cell": cells[i], "other": cells[j], "diff": est, "lo": lo, "hi": hi,
                              "n_common": n, "better": sig})
            if sig:
                better_count[j] += 1
    pairwise = pd.DataFrame(pair_rows, columns=["cell", "other", "diff", "lo", "hi", "n_common", "better"])
    has_data = np.isfinite(boot.point)
    rank = np.where(has_data, 1 + better_count, np.nan)

    # side columns
    run_cols = runs[["run_key", "cell", "seed", "lr", "final_loss", "origin"] + WORKLOAD].copy()
    loss_cell, loss_cw = _agg_seeds_then_workloads(run_cols, "final_loss", cells, workloads)
    cost = np.full(C, np.nan)
    for i, c in enumerate(cells):
        opt, reg = c.split(" × ", 1)
        ref = f"{opt} × none"
        if reg == "none":
            cost[i] = 0.0 if has_data[i] else np.nan
        elif ref in ci_:
            j = ci_[ref]
            common = np.isfinite(loss_cw[i]) & np.isfinite(loss_cw[j])
            if common.any():
                cost[i] = float(np.mean(loss_cw[i, common] - loss_cw[j, common]))
    matched = np.full(C, np.nan)
    matched_source = "none (no checkpoint trajectories)"
    traj = None
    if frames.trajectory is not None and not frames.trajectory.empty:
        steps = frames.trajectory[["run_key", "step", "loss"]].drop_duplicates(["run_key", "step"])
        if frames.samples_all is not None and not frames.samples_all.empty:
            sa = frames.samples_all
            sa = sa[(sa["question_set_sha256"] == info["question_set"]["sha256"]) & (sa["judge"] == info["judge_json"])
                    & sa["run_key"].isin(set(runs["run_key"]))]
            if not sa.empty:
                sa = _classify_frame(sa, convention)
                per_step = sa.groupby(["run_key", "step"])["aligned_value"].mean().rename("mean_aligned").reset_index()
                traj = steps.merge(per_step, on=["run_key", "step"], how="inner")
                matched_source = f"checkpoint samples re-scored under {convention}"
        elif "mean_aligned" in frames.trajectory:
            traj = frames.trajectory[["run_key", "step", "loss", "mean_aligned"]]
            matched_source = "checkpoint summaries (their stored convention)"
    if traj is not None and not traj.empty:
        ml = _matched_loss(traj, runs, "mean_aligned")
        if not ml.empty:
            rc = run_cols.assign(matched=run_cols["run_key"].map(ml))
            matched, _ = _agg_seeds_then_workloads(rc, "matched", cells, workloads)
    flat = np.full(C, np.nan)
    spectra_last = pd.DataFrame()
    if frames.spectra is not None and not frames.spectra.empty:
        sp = frames.spectra[frames.spectra["run_key"].isin(set(runs["run_key"]))]
        if not sp.empty:
            last = sp.groupby("run_key")["step"].transform("max")
            sp = sp[sp["step"] == last]
            measures = [m for m in ("stable_rank", "spectral_entropy", "condition_number", "fro_nuclear_ratio")
                        if m in sp]
            spectra_last = sp.groupby("run_key")[measures].mean().reset_index().merge(
                run_cols[["run_key", "cell"] + WORKLOAD], on="run_key")
            rc = run_cols.merge(spectra_last[["run_key", "fro_nuclear_ratio"]], on="run_key", how="left")
            flat, _ = _agg_seeds_then_workloads(rc, "fro_nuclear_ratio", cells, workloads)

    md = sorted({(m, d) for (m, d, _) in workloads})
    mis_ci, al_ci = boot_mis.ci(), boot_al.ci()
    rows = []
    for i, c in enumerate(cells):
        opt, reg = c.split(" × ", 1)
        rr = runs[runs["cell"] == c]
        covered = sorted({(m, d) for (m, d, _), ok in zip(workloads, np.isfinite(boot.point_w[i])) if ok})
        ran = {(m, d) for (m, d, _), ok in zip(workloads, present[i].any(-1)) if ok}
        origins = sorted(set(rr["origin"].astype(str)))
        n_sub = int((rr["origin"] == "submitted").sum())
        rows.append({
            "rank": rank[i], "cell": c, "optimizer": opt, "regularizer": reg,
            "misaligned_rate": boot_mis.point[i], "misaligned_lo": mis_ci[i, 0], "misaligned_hi": mis_ci[i, 1],
            "mean_aligned": boot_al.point[i], "aligned_lo": al_ci[i, 0], "aligned_hi": al_ci[i, 1],
            "final_loss": loss_cell[i], "loss_cost": cost[i], "aligned_at_matched_loss": matched[i],
            "fro_nuclear": flat[i], "coverage": f"{len(covered)}/{len(md)}",
            "n_covered": len(covered), "n_model_dataset": len(md),
            "missing": "; ".join(f"{m} × {d}" for m, d in md if (m, d) not in ran),
            "none_included": "; ".join(f"{m} × {d}" for m, d in md if (m, d) in ran and (m, d) not in covered),
            "n_runs": len(rr), "n_seeds": int(rr["seed"].nunique()),
            "n_samples": int((samples["cell"] == c).sum()), "n_included": int(arrays["n"][i].sum()),
            "source": (origins[0] if len(origins) == 1 else f"mixed ({n_sub} of {len(rr)} runs submitted)")
                      if origins else "",
        })
    table = pd.DataFrame(rows)
    table["tie"] = table["rank"].map(table["rank"].value_counts()) > 1
    sort_val = table[mcol] * (-1 if higher_better else 1)
    table = table.assign(_s=sort_val).sort_values(["rank", "_s", "cell"], na_position="last").drop(columns="_s")
    table = table.reset_index(drop=True)

    bd = pd.DataFrame(boot.point_w, index=cells,
                      columns=pd.MultiIndex.from_tuples(workloads, names=WORKLOAD))
    models = sorted({w[0] for w in workloads})
    pm = pd.DataFrame(index=cells, columns=models, dtype=float)
    for mname in models:
        cols = [k for k, w in enumerate(workloads) if w[0] == mname]
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                pm[mname] = np.nanmean(boot.point_w[:, cols], axis=1)

    # per-run points: final loss vs the run's own alignment (for the loss–alignment plot)
    per_run = samples.groupby("run_key").agg(n=("included", "sum"), m=("is_misaligned", "sum"),
                                             a=("aligned_value", "mean"))
    points = run_cols.merge(per_run, left_on="run_key", right_index=True, how="left")
    with np.errstate(all="ignore"):
        points["misaligned_rate"] = points["m"] / points["n"].where(points["n"] > 0)
    points = points.rename(columns={"a": "mean_aligned"}).drop(columns=["n", "m"])

    tuning = sorted({str(x) for x in runs.get("tuning_rule", pd.Series(dtype=str)).dropna() if str(x)})
    header = {
        "convention": convention, "metric": metric, "metric_label": mlabel, "higher_is_better": higher_better,
        "question_set": info["question_set"], "judge": info["judge"], "not_shown": info["not_shown"],
        "tuning_rule": tuning or ["(not recorded)"],
        "lr_selection": ("per cell and workload, the lr with the most seeds (a tuning rule's choice), then the "
                         "lowest mean final training loss over seeds" if lr_tuned
                         else "one lr per cell and workload in the store"),
        "matched_loss": matched_source,
        "controls": {"datasets": controls, "included": bool(include_controls)},
        "ci": {"level": level, "n_boot": n_boot, "clusters": ["seed", "question"], "seed": seed},
        "n_cells": C, "n_runs": len(runs), "n_samples": len(samples), "n_questions": Q,
        "models": models, "datasets": sorted({w[1] for w in workloads}),
        "batch_sizes": sorted({int(w[2]) for w in workloads if pd.notna(w[2])}),
        "origins": {k: int(v) for k, v in runs["origin"].value_counts().items()},
    }
    ran_w = pd.DataFrame(present.any(-1), index=cells, columns=bd.columns)
    return Leaderboard(header=header, table=table, breakdown=bd, ran=ran_w, per_model=pm, pairwise=pairwise,
                       points=points, spectra=spectra_last)


def rank_labels(table: pd.DataFrame) -> list[str]:
    """'1', '=2', '=2', '4' … ('=' marks a tie); '—' for a cell without data."""
    out = []
    for r, t in zip(table["rank"], table["tie"]):
        out.append("—" if pd.isna(r) else (f"={int(r)}" if t else f"{int(r)}"))
    return out
