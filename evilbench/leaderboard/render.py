"""The leaderboard as a terminal table and as a static HTML page with plots.

The page (index.html + PNG/SVG plots + leaderboard.json + leaderboard.csv) needs no server: a sortable
table (a few lines of inline JS), the per-model breakdown, the model × dataset coverage grid, and
plots of the ranking with its CIs, final training loss vs alignment per optimiser, and the adapter
spectra. Every string from the store is HTML-escaped by the template engine (autoescape); plots are
embedded as <img> files, which run no script. Colours: the Okabe–Ito colour-blind-safe palette."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from evilbench.leaderboard.ranking import Leaderboard, rank_labels

# Okabe & Ito (2008), colour-blind safe (black dropped; used for text)
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _pct(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def _num(x, fmt="{:.3f}") -> str:
    return "—" if x is None or not np.isfinite(x) else fmt.format(x)


def _ci(lo, hi, pct=False) -> str:
    if lo is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f"[{_pct(lo)}, {_pct(hi)}]" if pct else f"[{lo:.1f}, {hi:.1f}]"


def judge_label(ident: dict) -> str:
    parts = [str(ident.get("spec") or ident.get("model") or "?")]
    if ident.get("snapshot") and ident.get("snapshot") != ident.get("model"):
        parts.append(f"snapshot {ident['snapshot']}")
    return ", ".join(parts)


def header_lines(lb: Leaderboard) -> list[str]:
    h = lb.header
    qs = h["question_set"]
    origins = ", ".join(f"{k} {v}" for k, v in sorted(h["origins"].items()))
    lines = [
        (f"metric: {h['metric_label']} ({'higher' if h['higher_is_better'] else 'lower'} is better); "
         f"convention: {h['convention']}"),
        (f"question set: {qs['name']} (sha256 {qs['sha256'][:16]}…, {h['n_questions']} questions); "
         f"judge: {judge_label(h['judge'])}"),
        f"tuning rule: {', '.join(h['tuning_rule'])}; lr: {h['lr_selection']}",
        (f"CIs: {int(100 * h['ci']['level'])} % bootstrap ({h['ci']['n_boot']} replicates) clustered by seed and "
         "question; rank = 1 + cells significantly better (= marks ties)"),
        (f"{h['n_cells']} cells, {h['n_runs']} runs, {h['n_samples']} samples; models: {len(h['models'])}, "
         f"datasets: {len(h['datasets'])}; runs by origin: {origins}"),
    ]
    if h.get("controls", {}).get("datasets"):
        c = h["controls"]
        lines.append(f"control datasets {'included' if c['included'] else 'left out'}: {', '.join(c['datasets'])}")
    if h.get("not_shown"):
        lines.append("not shown (other question set / judge): " + ", ".join(h["not_shown"]))
    return lines


COLUMNS = ["rank", "optimizer", "regularizer", "misaligned %", "95% CI", "aligned", "95% CI ", "final loss",
           "loss cost", "aligned @ matched loss", "Fro/nuc", "coverage", "source"]


def table_rows(lb: Leaderboard) -> list[list[str]]:
    t = lb.table
    out = []
    for lab, (_, r) in zip(rank_labels(t), t.iterrows()):
        out.append([lab, str(r["optimizer"]), str(r["regularizer"]), _pct(r["misaligned_rate"]),
                    _ci(r["misaligned_lo"], r["misaligned_hi"], pct=True), _num(r["mean_aligned"], "{:.1f}"),
                    _ci(r["aligned_lo"], r["aligned_hi"]), _num(r["final_loss"]),
                    _num(r["loss_cost"], "{:+.3f}"), _num(r["aligned_at_matched_loss"], "{:.1f}"),
                    _num(r["fro_nuclear"]), str(r["coverage"]), str(r["source"])])
    return out


def format_plain(lb: Leaderboard) -> str:
    rows = [COLUMNS] + table_rows(lb)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = header_lines(lb) + [""]
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    missing = [(r["cell"], r["missing"]) for _, r in lb.table.iterrows() if r["missing"]]
    if missing:
        lines.append("")
        lines.append("missing model × dataset cells (not imputed):")
        lines += [f"  {c}: {m}" for c, m in missing]
    lines += _none_included_lines(lb)
    return "\n".join(lines)


def _none_included_lines(lb: Leaderboard) -> list[str]:
    rows = [(r["cell"], r["none_included"]) for _, r in lb.table.iterrows() if r.get("none_included")]
    if not rows:
        return []
    head = (f"runs without a single included sample under the {lb.header['convention']} convention "
            "(every answer excluded, e.g. incoherent):")
    return ["", head] + [f"  {c}: {m}" for c, m in rows]


def print_rich(lb: Leaderboard, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title="evilbench leaderboard", caption="\n".join(escape(x) for x in header_lines(lb)),
                  caption_justify="left")
    for c in COLUMNS:
        table.add_column(escape(c), justify="right" if c not in ("optimizer", "regularizer", "source") else "left")
    for r in table_rows(lb):
        table.add_row(*[escape(x) for x in r])
    console.print(table)
    missing = [(r["cell"], r["missing"]) for _, r in lb.table.iterrows() if r["missing"]]
    if missing:
        console.print("missing model × dataset cells (not imputed):", markup=False)
        for c, m in missing:
            console.print(f"  {c}: {m}", markup=False)
    for line in _none_included_lines(lb):
        console.print(line, markup=False)


# ---------------------------------------------------------------------------------------------- plots
def _colors(names: list[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(set(names)))}


def _save(fig, out: Path, stem: str) -> list[str]:
    files = []
    for ext in ("png", "svg"):
        p = out / f"{stem}.{ext}"
        fig.savefig(p, dpi=110, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        files.append(p.name)
    return files


def plot_all(lb: Leaderboard, out: Path) -> dict[str, list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "path"  # text as outlines: no text nodes from the store in the SVG
    t = lb.table
    colors = _colors(t["optimizer"].astype(str).tolist())
    h = lb.header
    plots = {}

    # 1. ranking with CIs (forest plot)
    mcol = "misaligned_rate" if h["metric"] == "misaligned_rate" else "mean_aligned"
    lo_c, hi_c = ("misaligned_lo", "misaligned_hi") if mcol == "misaligned_rate" else ("aligned_lo", "aligned_hi")
    scale = 100.0 if mcol == "misaligned_rate" else 1.0
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(t), 2) + 1.2))
    labs = rank_labels(t)
    for y, (_, r) in enumerate(t.iterrows()):
        v = r[mcol] * scale
        if not np.isfinite(v):
            continue
        c = colors[str(r["optimizer"])]
        ax.plot([r[lo_c] * scale, r[hi_c] * scale], [y, y], color=c, lw=2.5)
        ax.plot([v], [y], marker=MARKERS[sorted(colors).index(str(r["optimizer"])) % len(MARKERS)], color=c,
                ms=8, mec="black", mew=0.6)
    ax.set_yticks(range(len(t)))
    ax.set_yticklabels([f"{lab}  {c}" for lab, c in zip(labs, t["cell"].astype(str))])
    ax.invert_yaxis()
    ax.set_xlabel(("misaligned rate (%)" if mcol == "misaligned_rate" else "mean alignment (0-100)")
                  + f", {int(100 * h['ci']['level'])} % CI")
    ax.set_title(f"ranking ({h['convention']} convention; {h['question_set']['name']})")
    ax.grid(axis="x", alpha=0.3)
    plots["ranking"] = _save(fig, out, "ranking")
    plt.close(fig)

    # 2. final training loss vs alignment, per optimiser
    p = lb.points.dropna(subset=["final_loss", "mean_aligned"]) if not lb.points.empty else lb.points
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if p is not None and not p.empty:
        p = p.assign(optimizer=p["cell"].str.split(" × ").str[0], reg=p["cell"].str.split(" × ").str[1])
        for k, (opt, g) in enumerate(sorted(p.groupby("optimizer"), key=lambda x: x[0])):
            for reg, gg in g.groupby("reg"):
                ax.scatter(gg["final_loss"], gg["mean_aligned"], color=colors.get(opt, PALETTE[k % 8]),
                           marker=MARKERS[sorted(colors).index(opt) % len(MARKERS)] if opt in colors else "o",
                           facecolors="none" if reg != "none" else None, s=40,
                           label=f"{opt} × {reg}", edgecolors=colors.get(opt, PALETTE[k % 8]))
        if (p["final_loss"] > 0).all():
            ax.set_xscale("log")
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no runs with a final loss", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("final training loss")
    ax.set_ylabel("mean alignment (0-100)")
    ax.set_title("final training loss vs alignment, per run (hollow: regularised)")
    ax.grid(alpha=0.3)
    plots["loss_alignment"] = _save(fig, out, "loss_alignment")
    plt.close(fig)

    # 3. spectra: each measure per cell (mean over modules at the last step; one dot per run)
    sp = lb.spectra
    measures = [m for m in ("fro_nuclear_ratio", "stable_rank", "spectral_entropy", "condition_number")
                if not sp.empty and m in sp and sp[m].notna().any()]
    n_m = max(len(measures), 1)
    fig, axes = plt.subplots(1, n_m, figsize=(3.2 * n_m, 0.4 * max(len(t), 2) + 1.5), squeeze=False)
    if measures:
        cells = t["cell"].astype(str).tolist()
        for ax, m in zip(axes[0], measures):
            for y, cell in enumerate(cells):
                v = sp.loc[sp["cell"] == cell, m].dropna()
                if v.empty:
                    continue
                opt = cell.split(" × ")[0]
                ax.scatter(v, np.full(len(v), y), color=colors.get(opt, "#999999"), s=18, alpha=0.8)
                ax.plot([v.mean()], [y], marker="|", color="black", ms=12)
            ax.set_yticks(range(len(cells)))
            ax.set_yticklabels(cells if ax is axes[0][0] else [""] * len(cells))
            ax.invert_yaxis()
            ax.set_title(m.replace("_", " "), fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    else:
        axes[0][0].text(0.5, 0.5, "no spectra in the store", ha="center", va="center", transform=axes[0][0].transAxes)
    fig.suptitle("adapter spectra at the last step (mean over modules; | : cell mean)", fontsize=10)
    plots["spectra"] = _save(fig, out, "spectra")
    plt.close(fig)
    return plots


# ---------------------------------------------------------------------------------------------- page
def _sort_key(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return repr(float(x)) if isinstance(x, (int, float, np.floating, np.integer)) else str(x)


def render_html(lb: Leaderboard, out: str | Path) -> Path:
    import jinja2

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_all(lb, out)
    env = jinja2.Environment(loader=jinja2.PackageLoader("evilbench.leaderboard", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    t = lb.table
    rows = []
    for (_, r), cells in zip(t.iterrows(), table_rows(lb)):
        sort = [_sort_key(r["rank"]), r["optimizer"], r["regularizer"], _sort_key(r["misaligned_rate"]),
                _sort_key(r["misaligned_lo"]), _sort_key(r["mean_aligned"]), _sort_key(r["aligned_lo"]),
                _sort_key(r["final_loss"]), _sort_key(r["loss_cost"]), _sort_key(r["aligned_at_matched_loss"]),
                _sort_key(r["fro_nuclear"]), _sort_key(r["n_covered"]), r["source"]]
        rows.append({"cells": list(zip(cells, sort)), "cell": str(r["cell"]), "tie": bool(r["tie"]),
                     "submitted": "submitted" in str(r["source"])})
    bd = lb.breakdown
    wl = [tuple(w) for w in bd.columns]

    def cellv(v, ran):
        if np.isfinite(v):
            return _pct(v) if lb.header["metric"] == "misaligned_rate" else _num(v, "{:.1f}")
        return "none included" if ran else "missing"

    pm = lb.per_model
    ran_m = lb.ran.T.groupby(level="model").any().T
    per_model = {"models": [str(m) for m in pm.columns],
                 "rows": [{"cell": str(c), "values": [cellv(v, bool(ran_m.loc[c, m]))
                                                      for m, v in zip(pm.columns, pm.loc[c].to_numpy(float))]}
                          for c in t["cell"]]}

    coverage = {"columns": [f"{m} × {d}" + (f" (bs {b})" if len(lb.header["batch_sizes"]) > 1 else "")
                            for m, d, b in wl],
                "rows": [{"cell": str(c), "values": [cellv(v, ran) for v, ran in
                                                      zip(bd.loc[c].to_numpy(float), lb.ran.loc[c].to_numpy(bool))]}
                         for c in t["cell"]]}
    html = env.get_template("leaderboard.html.jinja").render(
        header=lb.header, header_lines=header_lines(lb), judge=judge_label(lb.header["judge"]),
        judge_json=json.dumps(lb.header["judge"], sort_keys=True), columns=COLUMNS, rows=rows,
        per_model=per_model, coverage=coverage, plots=plots, missing=[(r["cell"], r["missing"])
                                                                     for _, r in t.iterrows() if r["missing"]],
        none_included=[(r["cell"], r["none_included"]) for _, r in t.iterrows() if r["none_included"]])
    (out / "index.html").write_text(html, encoding="utf-8")
    (out / "leaderboard.json").write_text(json.dumps(_jsonable(lb.to_dict()), indent=1, sort_keys=True),
                                          encoding="utf-8")
    t.to_csv(out / "leaderboard.csv", index=False)
    return out / "index.html"


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if o is pd.NA:
        return None
    return o
