"""Analysis of a results store: per-run metrics from the stored trajectories, cell aggregates with
cluster-bootstrap CIs, regressions of alignment on the final training loss, alignment at matched
training loss, EM over training with the first-fit point, spectra per optimiser, the regulariser
effect. Everything is computed from the store's frames (runs, trajectory, spectra), so it applies to
any sweep: the toy world adds its exact scores as `scores_*` columns.

Per-run metrics, for every evaluated measure m (misaligned_rate, mean_aligned, coherent_rate from the
sampled judge; scores_* from exact scorers):
  final_m     at the final adapter          base_m   at step 0 (the base), if evaluated
  auc_m       trapezoid area under m over the training fraction step / total (step 0 included when
              evaluated): the mean of m during training
  fit_step    the first checkpoint where the narrow task counts as fitted: the fit measure reaches the
              fit threshold (toy world: scores_in_domain_misalignment >= 0.9), or, without such a
              measure, the training loss is within 5 % of the final loss
  at_fit_m    m at fit_step                 peak_m / min_m   over the checkpoints (step > 0)
Aggregates: means over runs with 95 % CIs from a two-level bootstrap (models resampled, then seeds
within each drawn model), 2000 resamples."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from evilbench.analysis.stats import ci_dict, ols, value_at_loss

BASE_MEASURES = ("misaligned_rate", "mean_aligned", "coherent_rate")
SPECTRA = ("stable_rank", "spectral_entropy", "condition_number", "fro_nuclear_ratio")
TOY_FIT = "scores_in_domain_misalignment"


@dataclass
class Options:
    question_set: str | None = None   # which evaluations (default: the most common question set / judge /
    judge: str | None = None          # convention in the store)
    convention: str | None = None
    fit_measure: str | None = None    # default: scores_in_domain_misalignment if present, else loss-based
    fit_threshold: float = 0.9
    loss_tolerance: float = 0.05
    primary: str | None = None        # the EM measure of tables and plots (default: scores_held_out_misalignment
                                      # if present, else misaligned_rate)
    alignment: str = "mean_aligned"   # the alignment measure of the regressions and regulariser effect
    n_boot: int = 2000


def _select_evals(traj, opts: Options):
    if traj.empty:
        return traj
    judge_spec = traj["judge"].map(lambda j: (json.loads(j) if isinstance(j, str) else {}).get("spec"))
    traj = traj.assign(judge_spec=judge_spec)
    for col, want in (("question_set", opts.question_set), ("judge_spec", opts.judge), ("convention", opts.convention)):
        if want is not None:
            traj = traj[traj[col] == want]
        elif traj[col].notna().any():
            common = traj[col].value_counts().idxmax()
            traj = traj[traj[col] == common]
    return traj


def measures_of(traj) -> list[str]:
    return [c for c in (*BASE_MEASURES, *sorted(c for c in traj.columns if c.startswith("scores_")))
            if c in traj.columns and traj[c].notna().any()]


def run_metrics(rows: list[dict], measures: list[str], fit_measure: str | None, fit_threshold: float,
                loss_tolerance: float, final_loss: float | None) -> dict:
    rows = sorted(rows, key=lambda r: (r["step"], r.get("is_final", False)))
    final = next((r for r in rows if r.get("is_final")), rows[-1])
    total = final["step"] or 1
    ck = [r for r in rows if r["step"] > 0]
    out = {"total_steps": total, "n_evals": len(rows)}
    fit = None
    if fit_measure:
        fit = next((r for r in ck if r.get(fit_measure) is not None and r[fit_measure] >= fit_threshold), None)
    elif final_loss is not None and math.isfinite(final_loss):
        fit = next((r for r in ck if r.get("loss") is not None and math.isfinite(r["loss"])
                    and r["loss"] <= final_loss * (1 + loss_tolerance)), None)
    out["fit_step"] = fit["step"] if fit else None
    for m in measures:
        vals = [(r["step"], r.get(m)) for r in rows if r.get(m) is not None and math.isfinite(r[m])]
        out[f"final_{m}"] = final.get(m)
        base = next((r for r in rows if r["step"] == 0), None)
        out[f"base_{m}"] = base.get(m) if base else None
        if len(vals) >= 2:
            x = np.array([s / total for s, _ in vals])
            y = np.array([v for _, v in vals])
            out[f"auc_{m}"] = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
        else:
            out[f"auc_{m}"] = None
        ckv = [r.get(m) for r in ck if r.get(m) is not None]
        out[f"peak_{m}"] = max(ckv) if ckv else None
        out[f"min_{m}"] = min(ckv) if ckv else None
        out[f"at_fit_{m}"] = fit.get(m) if fit else None
    return out


def run_table(store, opts: Options):
    """(runs DataFrame with per-run metrics, selected trajectory DataFrame, measures)."""
    import pandas as pd

    runs = store.runs_frame()
    traj = _select_evals(store.trajectory_frame(), opts)
    measures = measures_of(traj) if len(traj) else []
    fit_measure = opts.fit_measure or (TOY_FIT if TOY_FIT in measures else None)
    by_run = {k: g.to_dict("records") for k, g in traj.groupby("run_key")} if len(traj) else {}
    rows = []
    spec = store.spectra_frame()
    spec_final = {}
    if len(spec):
        last = spec.groupby("run_key")["step"].transform("max")
        fin = spec[spec["step"] == last]
        spec_final = {k: {m: g[m].dropna().mean() if g[m].notna().any() else None for m in SPECTRA}
                      for k, g in fin.groupby("run_key")}
    for r in runs.to_dict("records"):
        row = {k: r.get(k) for k in ("run_key", "origin", "model", "dataset", "optimizer", "lr", "regularizer",
                                     "reg_weight", "batch_size", "seed", "status", "final_loss", "tuning_rule")}
        if r["run_key"] in by_run and r.get("status") == "finished":
            row.update(run_metrics(by_run[r["run_key"]], measures, fit_measure, opts.fit_threshold,
                                   opts.loss_tolerance, r.get("final_loss")))
        row.update({f"spectra_{m}": v for m, v in spec_final.get(r["run_key"], {}).items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    df["role"] = _roles(store, runs, df)
    return df, traj, measures


def _roles(store, runs, df) -> list[str]:
    """"grid", or "lr-candidate" for a tuning rule's calibration run at an lr the rule did not choose
    (the sweep records its choices in the store's meta: lr_choice/<sweep>/<optimiser>)."""
    choices = {}
    for k, v in store.get_meta("lr_choice/").items():
        _, sweep, opt = k.split("/", 2)
        choices[(sweep, opt)] = v.get("lr")
    sweeps = dict(zip(runs["run_key"], runs["sweep"])) if "sweep" in runs.columns else {}
    out = []
    for r in df.to_dict("records"):
        lr = choices.get((sweeps.get(r["run_key"]), r["optimizer"]))
        cand = r.get("tuning_rule") is not None and lr is not None and r.get("lr") != lr
        out.append("lr-candidate" if cand else "grid")
    return out


OPT_ORDER = ("sgd", "adam", "adamw", "lion", "muon", "muon-torch")


def cell_order(df) -> list[tuple]:
    """Cells (dataset, optimizer, regularizer): the dataset with the most runs first, optimisers in the
    usual order (then alphabetically), the plain cell before regularised ones."""
    size = df.groupby("dataset").size().to_dict()
    keys = {_cell_key(r) for r in df.to_dict("records")}

    def rank(k):
        ds, opt, reg = k
        o = OPT_ORDER.index(opt) if opt in OPT_ORDER else len(OPT_ORDER)
        return (-size.get(ds, 0), ds, o, opt, reg != "none", str(reg))

    return sorted(keys, key=rank)


def _cell_key(r) -> tuple:
    return (r["dataset"], r["optimizer"], r["regularizer"])


def _values(runs: list[dict], col: str) -> dict:
    return {(r["model"], (r["seed"], r.get("lr"), r.get("batch_size"))): r.get(col) for r in runs}


def cells(df, columns: list[str], n_boot: int = 2000) -> list[dict]:
    """One aggregate per (dataset, optimizer, regularizer), in cell_order."""
    order = cell_order(df)
    out = {k: [] for k in order}
    recs = sorted(df.to_dict("records"), key=lambda r: (str(r["model"]), r["seed"]))
    for r in recs:
        out[_cell_key(r)].append(r)
    res = []
    for k in order:
        runs = out[k]
        done = [r for r in runs if r.get("status") == "finished"]
        lrs = sorted({r["lr"] for r in runs if r.get("lr") is not None})
        row = {"dataset": k[0], "optimizer": k[1], "regularizer": k[2], "lr": lrs[0] if len(lrs) == 1 else lrs,
               "runs": len(runs), "finished": len(done)}
        for c in columns:
            row[c] = ci_dict(_values(done, c), n_boot=n_boot) if c in df.columns else None
        if "fit_step" in df.columns:
            fitted = sum(1 for r in done if r.get("fit_step") is not None and not _nan(r["fit_step"]))
            row["fit_rate"] = fitted / max(1, len(done))
        res.append(row)
    return res


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def regressions(df, alignment: str) -> list[dict]:
    """Alignment on log final training loss (R²), and with optimiser strata (adjusted R²), per dataset
    and over all datasets."""
    col = f"final_{alignment}"
    out = []
    if col not in df.columns:
        return out
    d = df[(df["status"] == "finished") & df[col].notna() & df["final_loss"].notna() & (df["final_loss"] > 0)]
    groups = [("all", d)] + ([(ds, g) for ds, g in d.groupby("dataset")] if d["dataset"].nunique() > 1 else [])
    for name, g in groups:
        base = ols(g[col].to_numpy(float), {"log_loss": np.log(g["final_loss"].to_numpy(float))})
        strat = ols(g[col].to_numpy(float), {"log_loss": np.log(g["final_loss"].to_numpy(float))},
                    {"optimizer": g["optimizer"].to_numpy()})
        out.append({"dataset": name, "alignment": alignment, "n": base["n"], "r2_log_loss": base["r2"],
                    "slope_log_loss": base["params"].get("log_loss"), "adj_r2_optimizer_stratified": strat["adj_r2"],
                    "r2_optimizer_stratified": strat["r2"], "formula": strat["formula"]})
    return out


def matched_loss(df, traj, measures: list[str], n_boot: int = 2000) -> tuple[list[dict], dict]:
    """Each run's measures where its training loss first reaches the dataset's matched loss: the highest
    of the runs' lowest checkpoint losses (a loss every finished run reaches), linearly interpolated
    between checkpoints. Returns (cells, {dataset: matched loss})."""
    fin = df[df["status"] == "finished"]
    by_run = {k: g.sort_values("step") for k, g in traj[traj["step"] > 0].groupby("run_key")} if len(traj) else {}
    targets, rows = {}, []
    for ds, g in fin.groupby("dataset"):
        mins = [by_run[k]["loss"].min() for k in g["run_key"] if k in by_run and by_run[k]["loss"].notna().any()]
        if not mins:
            continue
        targets[ds] = float(max(mins))
        for r in g.to_dict("records"):
            t = by_run.get(r["run_key"])
            if t is None:
                continue
            row = dict(r)
            for m in measures:
                row[f"matched_{m}"] = value_at_loss(t["loss"].tolist(), t[m].tolist(), targets[ds])
            rows.append(row)
    import pandas as pd

    mdf = pd.DataFrame(rows)
    if mdf.empty:
        return [], targets
    res = cells(mdf, [f"matched_{m}" for m in measures], n_boot)
    for c in res:
        c["matched_loss"] = targets.get(c["dataset"])
    return res, targets


def regularizer_effect(df, columns: list[str], n_boot: int = 2000) -> list[dict]:
    """Δ (regularised − plain) of each column over runs paired by model, dataset, optimizer, lr, batch
    size and seed, with cluster-bootstrap CIs (models, then seeds)."""
    fin = df[df["status"] == "finished"].to_dict("records")
    plain = {(r["model"], r["dataset"], r["optimizer"], r["lr"], r["batch_size"], r["seed"]): r
             for r in fin if r["regularizer"] == "none"}
    groups: dict = {}
    for r in sorted(fin, key=lambda r: (str(r["model"]), r["seed"])):
        if r["regularizer"] == "none":
            continue
        p = plain.get((r["model"], r["dataset"], r["optimizer"], r["lr"], r["batch_size"], r["seed"]))
        if p is not None:
            groups.setdefault((r["dataset"], r["optimizer"], r["regularizer"]), []).append((r, p))
    out = []
    for (ds, opt, reg), pairs in groups.items():
        row = {"dataset": ds, "optimizer": opt, "regularizer": reg, "pairs": len(pairs)}
        for c in columns:
            vals = {}
            for r, p in pairs:
                a, b = r.get(c), p.get(c)
                ok = a is not None and b is not None and not _nan(a) and not _nan(b)
                vals[(r["model"], (r["seed"], r["lr"], r["batch_size"]))] = (a - b) if ok else None
            row[f"delta_{c}"] = ci_dict(vals, n_boot=n_boot)
        out.append(row)
    return out


def base_rates(traj, df, measures: list[str], n_boot: int = 2000) -> dict:
    """The bases' measures (step-0 evaluations), one value per model."""
    if traj.empty or not (traj["step"] == 0).any():
        return {}
    z = traj[traj["step"] == 0].merge(df[["run_key", "model"]], on="run_key")
    z = z.sort_values("model").drop_duplicates("model")
    return {m: ci_dict({(r["model"], 0): r[m] for r in z.to_dict("records")}, n_boot=n_boot) for m in measures}


def mean_trajectories(df, traj, measures: list[str]):
    """Per cell and step: mean of each measure and of the loss over the cell's finished runs."""
    if traj.empty:
        return traj
    t = traj.merge(df[["run_key", "model", "dataset", "optimizer", "regularizer", "seed", "status"]], on="run_key")
    t = t[t["status"] == "finished"]
    cols = ["loss", *measures]
    g = t.groupby(["dataset", "optimizer", "regularizer", "step"])[cols]
    m = g.mean().reset_index()
    m["runs"] = g.size().to_numpy()
    return m
