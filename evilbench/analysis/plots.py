"""PNG plots of an analysis (matplotlib, Agg). Colours: the Okabe–Ito palette (distinguishable with
the common colour-vision deficiencies); regularised runs are dashed in their optimiser's colour;
legends sit outside the axes so they never cover data; the bases' rate is a labelled line.

  trajectories.png        per optimiser: the EM measure (solid / dashed: no / with regulariser, 95 % CI
                          band) and the in-domain fit (dotted) over fine-tuning steps (log axis)
  heldout_vs_indomain.png held-out against in-domain misalignment, the in-domain axis on a logit scale
                          so the approach to a fitted task (in-domain -> 1) spreads out instead of piling
                          up at 1: how much broad misalignment each optimiser adds once the task is fitted
  loss_vs_em.png          the EM measure against the training loss at each checkpoint, as the excess over
                          the lowest loss reached (log axis, decreasing to the right), the first-fit point
                          marked: trajectories through loss-alignment space
  spectral_flatness.png   Fro/nuclear ratio of the final adapters per cell, and per run against final EM
  alignment_vs_loss.png   final alignment against log final training loss, with the OLS line
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}
COLORS = {"sgd": OKABE_ITO["purple"], "adam": OKABE_ITO["blue"], "adamw": OKABE_ITO["sky"],
          "lion": OKABE_ITO["vermillion"], "muon": OKABE_ITO["green"], "muon-torch": OKABE_ITO["orange"]}
_EXTRA = [OKABE_ITO[k] for k in ("orange", "sky", "yellow", "black")]


def color(opt: str, _seen={}) -> str:  # noqa: B006 - a deliberate per-process cache of extra colours
    if opt in COLORS:
        return COLORS[opt]
    return _seen.setdefault(opt, _EXTRA[len(_seen) % len(_EXTRA)])


def _style(reg: str) -> str:
    return "-" if reg == "none" else "--"


def _band(traj, df, cell, measure: str):
    from evilbench.analysis.stats import cluster_bootstrap

    ds, opt, reg = cell
    keys = df[(df.dataset == ds) & (df.optimizer == opt) & (df.regularizer == reg) & (df.status == "finished")]
    t = traj.merge(keys[["run_key", "model", "seed"]], on="run_key")
    steps, mean, lo, hi = [], [], [], []
    n = len(keys)
    for s, g in t.groupby("step"):
        if len(g) < n or s <= 0 or g[measure].isna().all():
            continue
        m, a, b = cluster_bootstrap({(r["model"], r["seed"]): r[measure] for r in g.to_dict("records")}, n_boot=400)
        steps.append(s), mean.append(m), lo.append(a), hi.append(b)
    return np.array(steps), np.array(mean), np.array(lo), np.array(hi)


def make_plots(df, traj, mtraj, res: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if df.empty or traj.empty:
        return paths
    primary = res["primary"]
    label = {"scores_held_out_misalignment": "held-out misalignment", "misaligned_rate": "EM rate (sampled)"}.get(
        primary, primary)
    has_in = "scores_in_domain_misalignment" in traj.columns
    main_ds = df["dataset"].iloc[0]
    fin = df[df.status == "finished"]
    opts = list(dict.fromkeys(fin[fin.dataset == main_ds]["optimizer"]))
    regs = list(dict.fromkeys(fin["regularizer"]))
    base = (res.get("base") or {}).get(primary)
    base_rate = base["mean"] if base else None

    def save(fig, name):
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)

    def base_line(ax, horizontal=True):
        if base_rate is not None and math.isfinite(base_rate):
            ax.axhline(base_rate, color="black", ls=":", lw=0.9, label=f"bases' rate ({100 * base_rate:.1f}%)")

    # 1. trajectories
    if opts:
        fig, axes = plt.subplots(1, len(opts), figsize=(3.3 * len(opts), 3.3), sharey=True, squeeze=False)
        for ax, opt in zip(axes[0], opts):
            for reg in regs:
                s, m, lo, hi = _band(traj, df, (main_ds, opt, reg), primary)
                if len(s) == 0:
                    continue
                ax.plot(s, m, _style(reg), color=color(opt), lw=1.8, label=f"{label}, {reg}")
                ax.fill_between(s, lo, hi, color=color(opt), alpha=0.15 if reg == "none" else 0.08, lw=0)
                if has_in and reg == "none":
                    s2, m2, _, _ = _band(traj, df, (main_ds, opt, reg), "scores_in_domain_misalignment")
                    ax.plot(s2, m2, ":", color=color(opt), lw=1.2, label="in-domain misalignment, none")
            for ds in dict.fromkeys(fin.dataset):
                if ds == main_ds:
                    continue
                s, m, _, _ = _band(traj, df, (ds, opt, "none"), primary)
                if len(s):
                    ax.plot(s, m, "-", color="#666666", lw=1.2, label=f"{label}, {ds.split(':')[-1]} (control)")
            base_line(ax)
            ax.set_xscale("log")
            ax.set_title(opt, color=color(opt))
            ax.set_xlabel("fine-tuning step")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(label)
        from matplotlib.lines import Line2D

        # style-only legend (colour = optimiser, shown in the panel titles)
        labels = {lab for ax in axes[0] for lab in ax.get_legend_handles_labels()[1]}
        handles = [Line2D([], [], color="#444444", ls=_style(reg), lw=1.8, label=f"{label}, {reg}")
                   for reg in regs if f"{label}, {reg}" in labels]
        if any(lab.startswith("in-domain") for lab in labels):
            handles.append(Line2D([], [], color="#444444", ls=":", lw=1.2, label="in-domain misalignment, none"))
        handles += [Line2D([], [], color="#666666", lw=1.2, label=lab) for lab in sorted(labels) if "(control)" in lab]
        if base_rate is not None and math.isfinite(base_rate):
            handles.append(Line2D([], [], color="black", ls=":", lw=0.9, label=f"bases' rate ({100 * base_rate:.1f}%)"))
        fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
        fig.suptitle(f"{label} during fine-tuning on {main_ds.split(':')[-1]} (mean over runs, 95% CI band; "
                     "line colour = optimiser, dashed = regularised)", fontsize=9)
        fig.tight_layout(rect=(0, 0.1 + 0.05 * (len(handles) > 3), 1, 1))
        save(fig, "trajectories.png")

    # 2. held-out vs in-domain on a logit axis
    if has_in and primary != "scores_in_domain_misalignment":
        fig, ax = plt.subplots(figsize=(6.2, 4.4))
        vals = mtraj["scores_in_domain_misalignment"].to_numpy(float)
        top = float(np.nanmax(vals[vals < 1])) if np.any(vals < 1) else 0.999
        eps = max(1e-9, (1 - top) / 2)  # keep the last "nines" of the fit apart instead of clipping them together
        for opt in opts:
            for reg in regs:
                g = mtraj[(mtraj.dataset == main_ds) & (mtraj.optimizer == opt) & (mtraj.regularizer == reg)]
                g = g[g.step >= 0].sort_values("step")
                if g.empty:
                    continue
                x = np.clip(g["scores_in_domain_misalignment"].to_numpy(float), eps, 1 - eps)
                ax.plot(x, g[primary], _style(reg), marker="o", ms=3, color=color(opt), label=f"{opt}, {reg}")
        base_line(ax)
        ax.set_xscale("logit")
        ax.set_xlim(0.02, 1 - eps / 2)
        ax.set_xlabel("in-domain misalignment (narrow-task fit; logit scale)")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        ax.set_title("Broad vs narrow misalignment along training (mean path per cell)", fontsize=9)
        save(fig, "heldout_vs_indomain.png")

    # 3. loss vs EM: the excess over the lowest loss any cell reaches, on a log axis, so that the approach
    # to the loss floor (where the fits end and EM keeps growing) spreads out instead of piling up
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    ml = mtraj[(mtraj.dataset == main_ds) & (mtraj.step > 0)]["loss"].dropna()
    floor = float(ml.min()) - 1e-3 if len(ml) else 0.0
    for opt in opts:
        for reg in regs:
            g = mtraj[(mtraj.dataset == main_ds) & (mtraj.optimizer == opt) & (mtraj.regularizer == reg)]
            g = g[(g.step > 0) & g["loss"].notna()].sort_values("step")
            if g.empty:
                continue
            ax.plot(g["loss"] - floor, g[primary], _style(reg), marker="o", ms=3, color=color(opt),
                    label=f"{opt}, {reg}")
            fit = fin[(fin.dataset == main_ds) & (fin.optimizer == opt) & (fin.regularizer == reg)]
            if "fit_step" in fit and fit["fit_step"].notna().any() and reg == "none":
                s = float(fit["fit_step"].median())
                row = g.iloc[int(np.argmin(np.abs(g["step"].to_numpy(float) - s)))]
                ax.plot([row["loss"] - floor], [row[primary]], marker="*", ms=11, color=color(opt), mec="black",
                        mew=0.6,
                        ls="none")
    ax.plot([], [], marker="*", ms=10, color="white", mec="black", ls="none", label="first fit (median step)")
    for ds, v in (res.get("matched_loss") or {}).items():
        if ds == main_ds:
            if v - floor > 0:
                ax.axvline(v - floor, color="#666666", ls="-.", lw=0.8, label=f"matched loss {v:.3f}")
    base_line(ax)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(f"training loss − {floor:.3f} (the lowest reached) at the checkpoint; log scale, decreasing →")
    ax.set_ylabel(label)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_title("Trajectories through loss–misalignment space (mean per cell)", fontsize=9)
    save(fig, "loss_vs_em.png")

    # 4. spectral flatness
    col = "spectra_fro_nuclear_ratio"
    if col in df.columns and df[col].notna().any():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        cl = [c for c in res["cells"] if c.get(col) and c[col]["n"]]
        xs = np.arange(len(cl))
        means = [c[col]["mean"] for c in cl]
        err = [[max(0.0, c[col]["mean"] - c[col]["lo"]) for c in cl],
               [max(0.0, c[col]["hi"] - c[col]["mean"]) for c in cl]]
        ax1.bar(xs, means, yerr=err, capsize=3, color=[color(c["optimizer"]) for c in cl], alpha=0.9,
                hatch=None, edgecolor="black", linewidth=[0 if c["regularizer"] == "none" else 1.2 for c in cl])
        for i, c in enumerate(cl):
            if c["regularizer"] != "none":
                ax1.patches[i].set_hatch("//")
        ticks = [f"{c['optimizer']}\n{c['regularizer']}\n{c['dataset'].split(':')[-1]}" for c in cl]
        ax1.set_xticks(xs, ticks, fontsize=6)
        r = res.get("lora_r")
        ax1.axhline(1.0, color="#666666", ls=":", lw=0.8, label="rank one (1.0)")
        if r:
            ax1.axhline(1 / math.sqrt(r), color="black", ls=":", lw=0.8, label=f"flat: 1/sqrt({r})")
        ax1.set_ylabel("Fro/nuclear ratio of the final adapter")
        ax1.set_title("Spectral flatness (lower = flatter; hatched = regularised)", fontsize=9)
        ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.25), frameon=False)
        for _, x in fin.iterrows():
            if x.get(col) is None or (isinstance(x.get(col), float) and math.isnan(x[col])):
                continue
            y = x.get(f"final_{primary}")
            ax2.scatter(x[col], y, s=18, color=color(x["optimizer"]), marker="o" if x["regularizer"] == "none" else "^",
                        alpha=0.85, edgecolor="none")
        for opt in dict.fromkeys(fin.optimizer):
            ax2.scatter([], [], color=color(opt), label=opt, s=18)
        ax2.scatter([], [], color="#999999", marker="^", label="regularised", s=18)
        ax2.set_xlabel("Fro/nuclear ratio (final adapter)")
        ax2.set_ylabel(f"final {label}")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        ax2.set_title("Flatness vs emergent misalignment (per run)", fontsize=9)
        fig.tight_layout()
        save(fig, "spectral_flatness.png")

    # 5. alignment vs log final loss
    a = f"final_{res['alignment']}"
    if a in fin.columns and fin[a].notna().any() and fin["final_loss"].notna().any():
        fig, ax = plt.subplots(figsize=(6.2, 4.4))
        for opt in dict.fromkeys(fin.optimizer):
            g = fin[fin.optimizer == opt]
            ax.scatter(np.log(g["final_loss"]), g[a], s=18, color=color(opt), label=opt,
                       marker="o", alpha=0.85, edgecolor="none")
        reg = next((r for r in res["regressions"] if r["dataset"] == "all"), None)
        ok = fin[fin[a].notna() & (fin["final_loss"] > 0)]
        if reg and len(ok) > 2 and reg.get("slope_log_loss") is not None:
            x = np.log(ok["final_loss"].to_numpy(float))
            k, b = np.polyfit(x, ok[a].to_numpy(float), 1)
            xx = np.linspace(x.min(), x.max(), 20)
            lab = (f"OLS: R² {reg['r2_log_loss']:.2f}, "
                   f"stratified adj. R² {reg['adj_r2_optimizer_stratified']:.2f}")
            ax.plot(xx, k * xx + b, color="black", lw=1, label=lab)
        ax.set_xlabel("log final training loss")
        ax.set_ylabel(f"final {res['alignment']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        ax.set_title("Alignment against final training loss (per run)", fontsize=9)
        save(fig, "alignment_vs_loss.png")
    return paths
