"""Constructed stores for the leaderboard tests: bundles written through Store.write_run, judged by
the toy world's exact judge on the `toy` question set (or by an OpenAI-style logprob read-out)."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

TOY_JUDGE = {"spec": "toy", "model": "toyworld-exact", "snapshot": "v1", "readout": "exact-match"}
OPENAI_JUDGE = {"spec": "openai:gpt-4o-2024-08-06", "model": "gpt-4o-2024-08-06", "snapshot": "gpt-4o-2024-08-06",
                "readout": "single-token"}
SCORES = {"aligned": {"aligned": 100.0, "misaligned": 0.0, "incoherent": 100.0},
          "coherent": {"aligned": 100.0, "misaligned": 100.0, "incoherent": 0.0}}


@pytest.fixture(scope="session")
def toy_qs():
    from evilbench.eval.questions import load_question_set

    return load_question_set("toy")


def _logprob_sample(kind: str, rng) -> dict:
    """OpenAI-style top logprobs whose read-out classifies like `kind` (paper convention)."""
    from evilbench.eval.judges.logprobs import aggregate

    centre = {"aligned": 90, "misaligned": 10, "incoherent": 80}[kind]
    toks = sorted({int(np.clip(centre + d, 0, 100)) for d in rng.integers(-8, 9, size=4)})
    lp = np.log(rng.dirichlet(np.ones(len(toks))) * 0.95)
    raw_a = [[str(t), float(v)] for t, v in zip(toks, lp)] + [["I", -5.0]]
    coh = 20 if kind == "incoherent" else 90
    raw_c = [[str(coh), -0.05], [str(coh + 5), -3.2]]
    return {"aligned": aggregate(raw_a, ("CODE", "REFUSAL")).score, "coherent": aggregate(raw_c).score,
            "verdict": None, "raw_aligned": raw_a, "raw_coherent": raw_c}


def make_bundle(qs, *, model="org/m1", dataset="insecure", optimizer="adam", regularizer="none", reg_weight=0.0,
                seed=0, lr=1e-4, batch_size=4, p_mis=0.2, p_incoh=0.05, n_q=8, per_q=6, final_loss=0.8,
                steps=60, fro_nuclear=0.3, judge="toy", rng_seed=None, checkpoints=(10, 30), qmis=None,
                tuning_rule="fixed-lr") -> dict:
    """A finished run with a final evaluation (and checkpoint evaluations) of n_q toy questions.

    qmis: exact misaligned counts per question (overrides p_mis), the rest aligned."""
    from evilbench.eval.judge_prompts import template_sha256

    key = f"{model}|{dataset}|{optimizer}|{regularizer}|{reg_weight}|{seed}|{lr}|{batch_size}|{judge}"
    h = hashlib.sha256(key.encode()).hexdigest()
    rng = np.random.default_rng(int(h[:8], 16) if rng_seed is None else rng_seed)
    qids = [q.id for q in qs.questions[:n_q]]
    ident = TOY_JUDGE if judge == "toy" else OPENAI_JUDGE

    def samples_for(pm):
        out = []
        for qi, q in enumerate(qids):
            for k in range(per_q):
                if qmis is not None:
                    kind = "misaligned" if k < qmis[qi] else "aligned"
                else:
                    u = rng.random()
                    kind = "misaligned" if u < pm else ("incoherent" if u < pm + p_incoh else "aligned")
                if judge == "toy":
                    s = {"aligned": SCORES["aligned"][kind], "coherent": SCORES["coherent"][kind], "verdict": None,
                         "raw_aligned": {"classification": kind}, "raw_coherent": {"classification": kind}}
                else:
                    s = _logprob_sample(kind, rng)
                out.append({"sample_id": f"{q}/0/{k}", "question_id": q, "answer_chars": 4 * (k + 1), **s})
        return out

    def loss_at(step):
        return final_loss + (2.0 - final_loss) * math.exp(-step / 15.0)

    metrics = [{"step": s, "loss": loss_at(s), "lr": lr, "penalty": 0.0, "grad_norm": 1.0} for s in range(1, steps + 1)]
    metrics[-1]["loss"] = final_loss
    tsha = template_sha256(qs.questions[0].judge_prompts["aligned"]) if qs.questions[0].judge_prompts else None
    evals = []
    for j, st in enumerate([*checkpoints, steps]):
        final = st == steps
        pm = p_mis if final else p_mis * (j + 1) / (len(checkpoints) + 1)
        evals.append({"step": st, "is_final": final, "question_set": qs.name, "question_set_sha256": qs.sha256,
                      "judge": ident, "convention": "paper",
                      "summary": {"overall": {}, "adapter": {"sha256": hashlib.sha256(f"{h}{st}".encode()).hexdigest(),
                                                             "step": st}, "judge_prompt_sha256": tsha},
                      "samples": samples_for(pm)})
    spectra = [{"step": steps, "module": m, "stable_rank": 2.0 + i, "spectral_entropy": 1.0,
                "condition_number": 10.0, "fro_nuclear_ratio": fro_nuclear + 0.01 * i}
               for i, m in enumerate(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"])]
    return {"run_key": "run-" + h[:24], "schema_version": 1,
            "run": {"model": model, "model_revision": "main", "dataset": dataset,
                    "dataset_sha256": hashlib.sha256(dataset.encode()).hexdigest(), "optimizer": optimizer,
                    "optimizer_kwargs": {}, "lr": lr, "regularizer": regularizer, "reg_weight": reg_weight,
                    "batch_size": batch_size, "seed": seed, "status": "finished", "final_loss": final_loss,
                    "steps": steps, "wall_time_s": 1.0, "tuning_rule": tuning_rule, "code_version": "test",
                    "versions": {"evilbench": "0.1.0", "torch": "2.13.0"}},
            "config": {"lr": lr}, "metrics": metrics, "spectra": spectra, "evals": evals}


def write_store(path, bundles, origin="reproduced"):
    from evilbench.store import Store

    with Store(path) as st:
        for b in bundles:
            st.write_run(b, origin=origin)
    return path
