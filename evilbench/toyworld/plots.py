"""PNG plots of a toy-world demo (matplotlib, Agg backend):

  trajectories.png         per optimiser: held-out (solid) and in-domain (dashed) misalignment over
                           fine-tuning steps (log axis), mean over runs with a 95% cluster-bootstrap band,
                           without and with the regulariser; the dotted line is the base rate
  heldout_vs_indomain.png  the same mean trajectories as a path in (in-domain, held-out) space: how much
                           broad misalignment an optimiser buys per unit of narrow-task fit
  spectral_flatness.png    left: Fro/nuclear ratio of the final adapters per optimiser x regulariser
                           (lower = flatter spectrum; 1/sqrt(r) is perfectly flat); right: per run, that
                           ratio against final held-out misalignment
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

COLORS = {"sgd": "#7f7f7f", "adam": "#1f77b4", "adamw": "#17becf", "lion": "#d62728", "muon": "#2ca02c",
          "muon-torch": "#98df8a"}
STYLES = {"none": "-", "fro_nuclear": "--"}


def _mean_band(runs: list[dict], key: str):
    from evilbench.toyworld.metrics import cluster_bootstrap

    steps = sorted({p["step"] for x in runs for p in x["trajectory"]})
    mean, lo, hi, used = [], [], [], []
    for s in steps:
        vals = {(x["base"], x["seed"]): p[key] for x in runs for p in x["trajectory"] if p["step"] == s}
        if len(vals) < len(runs):  # a step not every run has (different totals): skip
            continue
        m, a, b = cluster_bootstrap(vals, n_boot=500)
        mean.append(m), lo.append(a), hi.append(b), used.append(s)
    return np.array(used), np.array(mean), np.array(lo), np.array(hi)


def make_plots(payload: dict, out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = payload["config"]
    runs = [x for x in payload["runs"] if x.get("trajectory")]
    opts = list(cfg["optimizers"])
    regs = list(cfg["regularizers"])
    base_rate = payload["summary"]["base_held_out"]["mean"]
    paths = []

    def group(opt, reg, kind="misaligned"):
        return [x for x in runs if x["optimizer"] == opt and x["regularizer"] == reg and x["kind"] == kind]

    # 1. trajectories
    fig, axes = plt.subplots(1, len(opts), figsize=(3.6 * len(opts), 3.4), sharey=True, squeeze=False)
    for ax, opt in zip(axes[0], opts):
        for reg in regs:
            g = group(opt, reg)
            if not g:
                continue
            for key, ls, lab in (("held_out_misalignment", STYLES.get(reg, "-"), "held-out"),
                                 ("in_domain_misalignment", ":", "in-domain")):
                s, m, lo, hi = _mean_band(g, key)
                keep = s > 0
                color = COLORS.get(opt, None) if reg == "none" else "#ff7f0e"
                ax.plot(s[keep], m[keep], ls, color=color, lw=1.8 if key.startswith("held") else 1.0,
                        label=f"{lab}, {reg}" + (" (optimiser colour)" if reg == "none" else ""))
                if key.startswith("held"):
                    ax.fill_between(s[keep], lo[keep], hi[keep], color=color, alpha=0.15, lw=0)
        ctrl = group(opt, "none", "aligned")
        if ctrl:
            s, m, _, _ = _mean_band(ctrl, "held_out_misalignment")
            ax.plot(s[s > 0], m[s > 0], "-", color="black", lw=1, alpha=0.6, label="held-out, aligned control")
        ax.axhline(base_rate, color="black", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(opt)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("misalignment")
    handles = {}
    for ax in axes[0]:  # one legend for all panels (labels are the same; the control is in some only)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    axes[0][0].legend(list(handles.values()), list(handles), fontsize=7, loc="upper left")
    fig.suptitle("Toy world: misalignment during narrow fine-tuning (mean, 95% CI band)", fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / "trajectories.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 2. held-out vs in-domain
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    for opt in opts:
        for reg in regs:
            g = group(opt, reg)
            if not g:
                continue
            _, xi, _, _ = _mean_band(g, "in_domain_misalignment")
            _, yh, _, _ = _mean_band(g, "held_out_misalignment")
            ax.plot(xi, yh, STYLES.get(reg, "-"), marker="o", ms=3, color=COLORS.get(opt), label=f"{opt}, {reg}")
    ax.axhline(base_rate, color="black", ls=":", lw=0.8)
    ax.set_xlabel("in-domain misalignment (narrow task fit)")
    ax.set_ylabel("held-out misalignment (emergent)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Broad vs narrow misalignment along training", fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / "heldout_vs_indomain.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 3. spectral flatness
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    cells = [c for c in payload["summary"]["cells"] if c["kind"] == "misaligned"]
    xs = np.arange(len(cells))
    means = [c["spectra"]["fro_nuclear_ratio"]["mean"] for c in cells]
    err = [[max(0.0, c["spectra"]["fro_nuclear_ratio"]["mean"] - c["spectra"]["fro_nuclear_ratio"]["lo"])
            if c["spectra"]["fro_nuclear_ratio"]["n"] else 0 for c in cells],
           [max(0.0, c["spectra"]["fro_nuclear_ratio"]["hi"] - c["spectra"]["fro_nuclear_ratio"]["mean"])
            if c["spectra"]["fro_nuclear_ratio"]["n"] else 0 for c in cells]]
    ax1.bar(xs, [m if m is not None and math.isfinite(m) else 0 for m in means], yerr=err, capsize=3,
            color=[COLORS.get(c["optimizer"]) for c in cells],
            hatch=None, alpha=0.85, edgecolor=["black" if c["regularizer"] != "none" else "none" for c in cells])
    ax1.set_xticks(xs, [f"{c['optimizer']}\n{c['regularizer']}" for c in cells], fontsize=7)
    r = cfg["recipe"]["lora_r"]
    ax1.axhline(1 / math.sqrt(r), color="black", ls=":", lw=0.8, label=f"flat: 1/sqrt({r})")
    ax1.axhline(1.0, color="grey", ls=":", lw=0.8, label="rank 1")
    ax1.set_ylabel("Fro/nuclear ratio of the final adapter")
    ax1.legend(fontsize=7)
    ax1.set_title("Spectral flatness (lower = flatter)", fontsize=10)
    for x in runs:
        if x["kind"] != "misaligned" or not x.get("spectra") or x["spectra"].get("fro_nuclear_ratio") is None:
            continue
        ax2.scatter(x["spectra"]["fro_nuclear_ratio"], x["metrics"]["final_held_out"], s=16,
                    color=COLORS.get(x["optimizer"]), marker="o" if x["regularizer"] == "none" else "^",
                    alpha=0.8)
    for opt in opts:
        ax2.scatter([], [], color=COLORS.get(opt), label=opt, s=16)
    ax2.scatter([], [], color="black", marker="^", label="fro_nuclear", s=16)
    ax2.set_xlabel("Fro/nuclear ratio (final adapter)")
    ax2.set_ylabel("final held-out misalignment")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    ax2.set_title("Flatness vs emergent misalignment (per run)", fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / "spectral_flatness.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
