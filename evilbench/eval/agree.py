"""Agreement between two judges on the same samples: Krippendorff's alpha (interval) and Spearman's
rho on the aligned scores, and the difference in misaligned rate under a convention.

Aligned value of a sample for a judge: its aligned score; a CODE verdict counts as the convention's
CODE value (0 under paper, no value otherwise); REFUSAL and unscorable answers have no value. Alpha
uses every sample (missing values allowed); rho uses the samples both judges gave a value. The rate
difference (A - B) comes with a paired 95 % bootstrap interval clustered by question (seeded)."""
from __future__ import annotations

import numpy as np

from evilbench.eval.scoring import (
    DEFAULT_N_BOOT,
    cluster_bootstrap,
    get_convention,
    outcomes,
    scores_by_sample,
    select_judge,
    summarize,
)


def _dicts(judgments) -> list[dict]:
    return [j if isinstance(j, dict) else j.to_dict() for j in judgments]


def aligned_values(samples: list[dict], judgments: list[dict], convention="paper") -> np.ndarray:
    conv = get_convention(convention)
    by = scores_by_sample(judgments)
    out = np.full(len(samples), np.nan)
    for i, s in enumerate(samples):
        a = by.get(s["sample_id"], {}).get("aligned") or {}
        if s.get("answer") is None:
            continue
        if a.get("score") is not None:
            out[i] = float(a["score"])
        elif a.get("verdict") == "CODE" and conv.code_value is not None:
            out[i] = conv.code_value
    return out


def agreement(judgments_a, judgments_b, samples: list[dict], convention="paper", *, n_boot: int = DEFAULT_N_BOOT,
              seed: int = 0) -> dict:
    """{"convention", "judges": [spec_a, spec_b], "n_samples", "n_pairs", "krippendorff_alpha",
    "spearman_rho", "spearman_p", "misaligned_rate_a", "misaligned_rate_b", "misaligned_rate_diff",
    "misaligned_rate_diff_ci", "mean_aligned_a", "mean_aligned_b", "classification_agreement"}; values
    that cannot be computed (too few pairs, no variance) are None."""
    import krippendorff
    from scipy.stats import spearmanr

    conv = get_convention(convention)
    ja, jb = select_judge(_dicts(judgments_a), None), select_judge(_dicts(judgments_b), None)
    specs = [((j[0].get("judge") or {}).get("spec") if j else None) for j in (ja, jb)]
    va, vb = aligned_values(samples, ja, conv), aligned_values(samples, jb, conv)
    both = ~np.isnan(va) & ~np.isnan(vb)
    alpha = None
    values = np.concatenate([va[both], vb[both]])
    if both.sum() >= 2 and np.ptp(values) > 0:
        alpha = float(krippendorff.alpha(reliability_data=np.stack([va, vb]), level_of_measurement="interval"))
    rho = p = None
    if both.sum() >= 3 and np.ptp(va[both]) > 0 and np.ptp(vb[both]) > 0:
        res = spearmanr(va[both], vb[both])
        rho, p = float(res.statistic), float(res.pvalue)
    sa = summarize(samples, ja, conv, n_boot=0)["overall"]
    sb = summarize(samples, jb, conv, n_boot=0)["overall"]
    diff = None
    if sa["misaligned_rate"] is not None and sb["misaligned_rate"] is not None:
        diff = sa["misaligned_rate"] - sb["misaligned_rate"]
    oa, ob = outcomes(samples, ja, conv), outcomes(samples, jb, conv)
    rows = np.array([[x.included, x.included and bool(x.misaligned), y.included, y.included and bool(y.misaligned)]
                     for x, y in zip(oa, ob)], dtype=float).reshape(len(samples), 4)
    qids = list(dict.fromkeys(s["question_id"] for s in samples))
    groups = [rows[[i for i, s in enumerate(samples) if s["question_id"] == q]] for q in qids]
    if len(groups) < 2:
        groups = [rows[i:i + 1] for i in range(len(rows))]
    ci = cluster_bootstrap(groups, lambda t: t[1] / t[0] - t[3] / t[2], n_boot=n_boot, seed=seed) \
        if diff is not None and n_boot > 0 else None
    common = [(x.misaligned, y.misaligned) for x, y in zip(oa, ob) if x.included and y.included]
    return {
        "convention": conv.name, "judges": specs, "n_samples": len(samples), "n_pairs": int(both.sum()),
        "krippendorff_alpha": alpha, "spearman_rho": rho, "spearman_p": p,
        "misaligned_rate_a": sa["misaligned_rate"], "misaligned_rate_b": sb["misaligned_rate"],
        "misaligned_rate_diff": diff, "misaligned_rate_diff_ci": ci,
        "mean_aligned_a": sa["mean_aligned"], "mean_aligned_b": sb["mean_aligned"],
        "classification_agreement": (sum(a == b for a, b in common) / len(common)) if common else None,
    }
