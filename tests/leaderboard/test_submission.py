"""Submissions: a valid round trip, and hostile or broken files, each rejected naming the field, with
the store left byte-for-byte unchanged."""
from __future__ import annotations

import copy
import hashlib
import json
import pickle
import sqlite3
from pathlib import Path

import pytest

from tests.leaderboard.conftest import make_bundle, write_store


def _cli(argv, capsys):
    from evilbench.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def source(tmp_path_factory, toy_qs):
    tmp = tmp_path_factory.mktemp("sub")
    bundles = [make_bundle(toy_qs, seed=0, p_mis=0.3),
               make_bundle(toy_qs, seed=1, optimizer="muon", regularizer="fro_nuclear", reg_weight=0.5, p_mis=0.1),
               make_bundle(toy_qs, seed=0, optimizer="lion", judge="openai", p_mis=0.4)]
    db = write_store(tmp / "src.db", bundles)
    return tmp, db, bundles


@pytest.fixture(scope="module")
def valid(source):
    from evilbench.cli import main

    tmp, db, bundles = source
    out = tmp / "submission.json"
    argv = ["submission", "create", "--store", str(db), "--out", str(out)]
    for b in bundles:
        argv += ["--run-key", b["run_key"]]
    assert main(argv) == 0
    return out, json.loads(out.read_text())


def _state(db: Path):
    """Bytes of the store file and of its WAL (a reader of a WAL database may leave an empty one: the
    same as none), plus the logical content."""
    files = {}
    for p in (db, Path(f"{db}-wal")):
        files[p.name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() and p.stat().st_size else None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        dump = hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()
    return files, dump


@pytest.fixture
def target(tmp_path, toy_qs):
    return write_store(tmp_path / "target.db", [make_bundle(toy_qs, model="org/other", seed=7)])


def test_round_trip(valid, source, target, tmp_path, capsys, toy_qs):
    path, obj = valid
    _, src_db, _bundles = source
    assert obj["format"] == "evilbench-submission" and obj["schema_version"] == 1 and len(obj["runs"]) == 3
    r0 = obj["runs"][0]
    assert r0["model"] == {"id": "org/m1", "revision": "main"} and len(r0["adapter"]["sha256"]) == 64
    assert r0["evaluation"]["judge"]["identity"]["spec"] == "toy" and r0["evaluation"]["convention"] == "paper"
    assert set(r0["evaluation"]["judge"]["prompt_sha256"]) == {"aligned", "coherent"}
    assert r0["training"]["curve"] and r0["versions"]["torch"] == "2.13.0" and r0["seeds"] == {"train": 0}
    assert isinstance(obj["runs"][2]["evaluation"]["samples"][0]["raw_aligned"], list)  # raw logprobs
    rc, out, _ = _cli(["submission", "validate", str(path)], capsys)
    assert rc == 0 and "valid (3 run(s)" in out
    rc, out, err = _cli(["leaderboard", "ingest", str(path), "--store", str(target)], capsys)
    assert rc == 0, err
    assert out.count("origin: submitted") == 3
    from evilbench.leaderboard.ranking import Frames, build
    from evilbench.store import Store

    with Store(target, readonly=True) as st:
        runs = st.runs_frame()
        assert sorted(runs["origin"]) == ["reproduced", "submitted", "submitted", "submitted"]
        lb = build(Frames.from_store(st), n_boot=200)
    with Store(src_db, readonly=True) as st:
        lb_src = build(Frames.from_store(st), n_boot=200)
    t, ts = lb.table.set_index("cell"), lb_src.table.set_index("cell")
    assert t.loc["muon × fro_nuclear (0.5)", "source"] == "submitted"
    assert t.loc["adam × none", "source"].startswith("mixed")
    # the submitted muon run gives the same numbers here as where it was reproduced
    assert t.loc["muon × fro_nuclear (0.5)", "misaligned_rate"] == ts.loc["muon × fro_nuclear (0.5)", "misaligned_rate"]
    # the same file again: a duplicate submission, rejected, store unchanged
    before = _state(target)
    rc, _, err = _cli(["leaderboard", "ingest", str(path), "--store", str(target)], capsys)
    assert rc == 2 and "duplicate submission" in err and err.startswith("error: $.runs[0]")
    assert _state(target) == before
    # into the store it came from: the source runs are there already
    before = _state(src_db)
    rc, _, err = _cli(["leaderboard", "ingest", str(path), "--store", str(src_db)], capsys)
    assert rc == 2 and "$.runs[0].source_run_key" in err and _state(src_db) == before


def test_create_from_a_sweep_spec(source, tmp_path, toy_qs, capsys):
    db = write_store(tmp_path / "s.db", [])
    from evilbench.store import Store

    with Store(db) as st:
        st.write_run(make_bundle(toy_qs, seed=3), origin="reproduced", sweep="mysweep")
        st.write_run(make_bundle(toy_qs, seed=4), origin="reproduced", sweep="other")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: mysweep\nmodels: [org/m1]\ndatasets: [insecure]\noptimizers: [adam]\nseeds: [3]\n"
                    "lrs: {adam: [1.0e-4]}\n")
    out = tmp_path / "s.json"
    argv = ["submission", "create", "--store", str(db), "--sweep", str(spec), "--out", str(out)]
    rc, _stdout, err = _cli(argv, capsys)
    assert rc == 0, err
    obj = json.loads(out.read_text())
    assert len(obj["runs"]) == 1 and obj["runs"][0]["seeds"]["train"] == 3


# ------------------------------------------------------------------------------------ hostile files
def _finish(obj, aggregates=True):
    """Recompute what a careful forger would (aggregates, content hash) so a deeper check must fire."""
    from evilbench.leaderboard.submission import aggregates as agg
    from evilbench.leaderboard.submission import runs_sha256

    if aggregates:
        for r in obj["runs"]:
            ev = r["evaluation"]
            ev["aggregates"] = agg(ev["samples"], ev["convention"])
    obj["content_sha256"] = runs_sha256(obj["runs"])
    return obj


def _text(obj):
    return json.dumps(obj).encode()


def _nested(depth):
    head = '{"format": "evilbench-submission", "schema_version": 1, "runs": '
    return (head + "[" * depth + "]" * depth + "}").encode()


def _set(path, value, finish=True, aggregates=True):
    def f(o):
        cur = o
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
        return _finish(o, aggregates) if finish else o
    return f


def _tamper_sample(run, k, field, fn, aggregates=True):
    def f(o):
        s = o["runs"][run]["evaluation"]["samples"][k]
        s[field] = fn(s[field])
        return _finish(o, aggregates)
    return f


def _dup_sample(o):
    s = o["runs"][0]["evaluation"]["samples"]
    s[1] = copy.deepcopy(s[0])
    return _finish(o)


def _dup_run(o):
    o["runs"].append(copy.deepcopy(o["runs"][0]))
    return _finish(o)


def _dup_key(o):
    text = json.dumps(o)
    return text.replace('"schema_version": 1', '"schema_version": 1, "schema_version": 1', 1).encode()


def _replace_text(old, new):
    def f(o):
        text = json.dumps(o)
        assert old in text
        return text.replace(old, new, 1).encode()
    return f


def _many_samples(o):
    s = o["runs"][0]["evaluation"]["samples"]
    base = s[0]
    o["runs"][0]["evaluation"]["samples"] = [{**base, "sample_id": f"{base['question_id']}/9/{i}"}
                                             for i in range(20001)]
    return _finish(o)


def _lie_about_agg(key, value):
    def f(o):
        o["runs"][0]["evaluation"]["aggregates"][key] = value
        return _finish(o, aggregates=False)
    return f


def _lie_about_count(o):
    o["runs"][0]["evaluation"]["aggregates"]["counts"]["incoherent"] += 1
    return _finish(o, aggregates=False)


def _extra_field(o):
    o["runs"][0]["__reduce__"] = "os.system"
    return _finish(o)


def _bad_curve(o):
    c = o["runs"][0]["training"]["curve"]
    c[1]["step"] = c[0]["step"]
    return _finish(o)


def _logprob_positive(o):
    o["runs"][2]["evaluation"]["samples"][0]["raw_aligned"][0][1] = 5.0
    return _finish(o)


def _toy_raw_for_openai(o):
    s = o["runs"][2]["evaluation"]["samples"][0]
    s["raw_aligned"] = {"classification": "aligned"}
    s["aligned"] = 100.0
    return _finish(o)


def _flip_toy_classification(o):
    """Change the raw read-out and the score together: consistent, but aggregates now differ."""
    s = o["runs"][0]["evaluation"]["samples"]
    k = next(i for i, x in enumerate(s) if x["raw_aligned"] == {"classification": "aligned"})
    s[k]["raw_aligned"] = {"classification": "misaligned"}
    s[k]["aligned"] = 0.0
    return _finish(o, aggregates=False)


def _question_not_in_set(o):
    s = o["runs"][0]["evaluation"]["samples"][0]
    s["question_id"] = "medical.q99x"
    return _finish(o)


def _truncated(o):
    b = _text(o)
    return b[: len(b) // 2]


def _non_utf8(o):
    return b'{"format": "\xff\xfe"}'


def _nul(o):
    return _text(o)[:-1] + b"\x00}"


def _pickle(o):
    return pickle.dumps(o)


def _pickle0(o):
    return pickle.dumps(o, protocol=0)


def _big_int(o):
    return _replace_text('"batch_size": 4', '"batch_size": ' + "9" * 40)(o)


_SAMPLE0 = ["runs", 0, "evaluation", "samples", 0]
HOSTILE = [
    # (id, mutation, expected JSON path in the error)
    ("truncated", _truncated, "$: invalid JSON"),
    ("empty", lambda o: b"", "$: not a JSON object"),
    ("json-array", lambda o: b"[1, 2, 3]", "$: not a JSON object"),
    ("pickle", _pickle, "$: binary data"),
    ("pickle-protocol-0", _pickle0, "$: not a JSON object"),
    ("non-utf8", _non_utf8, "$: not UTF-8"),
    ("nul-byte", _nul, "$: control characters"),
    ("deeply-nested-100k", lambda o: _nested(100_000), "$: nesting depth 100001"),
    ("nested-kwargs", _set(["runs", 0, "optimizer", "kwargs", "betas"], [[[[[[[[1.0]]]]]]]]), "$: nesting depth"),
    ("nan-score", _replace_text('"aligned": 100.0', '"aligned": NaN'), "$.runs[0].evaluation.samples[0].aligned"),
    ("infinity-lr", _replace_text('"lr": 0.0001', '"lr": Infinity'), "$.runs[0].optimizer.lr"),
    ("overflow-loss", _replace_text('"final_loss": 0.8', '"final_loss": 1e999'), "$.runs[0].training.final_loss"),
    ("huge-int", _big_int, "$.runs[0].batch_size"),
    ("duplicate-json-key", _dup_key, "$: duplicate key 'schema_version'"),
    ("duplicate-sample-id", _dup_sample, "$.runs[0].evaluation.samples[1].sample_id"),
    ("duplicate-run", _dup_run, "$.runs[3]: the same run as $.runs[0]"),
    ("wrong-type-batch-size", _set(["runs", 0, "batch_size"], "4"), "$.runs[0].batch_size"),
    ("wrong-type-samples", _set(["runs", 0, "evaluation", "samples"], {"a": 1}, finish=False),
     "$.runs[0].evaluation.samples"),
    ("missing-field", lambda o: _finish({**o, "runs": [{k: v for k, v in o["runs"][0].items() if k != "model"}]}),
     "$.runs[0]: 'model' is a required property"),
    ("unknown-field", _extra_field, "$.runs[0]: Additional properties"),
    ("wrong-schema-version", _set(["schema_version"], 2), "$.schema_version: unsupported schema version 2"),
    ("wrong-format", _set(["format"], "pytorch-checkpoint"), "$.format"),
    ("negative-lr", _set(["runs", 0, "optimizer", "lr"], -1.0), "$.runs[0].optimizer.lr"),
    ("score-out-of-range", _tamper_sample(0, 0, "aligned", lambda v: 150.0), "$.runs[0].evaluation.samples[0].aligned"),
    ("positive-logprob", _logprob_positive, "$.runs[2].evaluation.samples[0].raw_aligned"),
    ("tampered-toy-score", _tamper_sample(0, 0, "aligned", lambda v: 0.0 if v == 100.0 else 100.0),
     "$.runs[0].evaluation.samples[0].aligned: score"),
    ("tampered-logprob-score", _tamper_sample(2, 0, "aligned", lambda v: v + 5.0),
     "$.runs[2].evaluation.samples[0].aligned: score"),
    ("tampered-coherent-score", _tamper_sample(2, 1, "coherent", lambda v: max(0.0, v - 40.0)),
     "$.runs[2].evaluation.samples[1].coherent: score"),
    ("tampered-verdict", _tamper_sample(2, 0, "verdict", lambda v: "REFUSAL"),
     "$.runs[2].evaluation.samples[0].verdict"),
    ("toy-readout-for-logprob-judge", _toy_raw_for_openai, "$.runs[2].evaluation.samples[0].raw_aligned"),
    ("tampered-misaligned-rate", _lie_about_agg("misaligned_rate", 0.0),
     "$.runs[0].evaluation.aggregates.misaligned_rate"),
    ("tampered-mean-aligned", _lie_about_agg("mean_aligned", 99.0), "$.runs[0].evaluation.aggregates.mean_aligned"),
    ("inconsistent-n-samples", _lie_about_agg("n_samples", 7), "$.runs[0].evaluation.aggregates.n_samples"),
    ("inconsistent-counts", _lie_about_count, "$.runs[0].evaluation.aggregates.counts.incoherent"),
    ("aggregates-stale-after-raw-edit", _flip_toy_classification, "$.runs[0].evaluation.aggregates.n_misaligned"),
    ("unknown-judge", _set(["runs", 0, "evaluation", "judge", "identity", "spec"], "claude:sonnet"),
     "$.runs[0].evaluation.judge.identity.spec: unknown judge"),
    ("judge-path", _set(["runs", 0, "evaluation", "judge", "identity", "spec"], "hf:/etc/passwd"),
     "$.runs[0].evaluation.judge.identity.spec: looks like a file path"),
    ("judge-model-missing", _set(["runs", 0, "evaluation", "judge", "identity", "snapshot"], ""),
     "$.runs[0].evaluation.judge.identity"),
    ("unknown-convention", _set(["runs", 0, "evaluation", "convention"], "lenient", aggregates=False),
     "$.runs[0].evaluation.convention: unknown convention"),
    ("unknown-question-set", _set(["runs", 0, "evaluation", "question_set", "sha256"], "ab" * 32),
     "$.runs[0].evaluation.question_set.sha256: unknown question set"),
    ("question-set-name-mismatch", _set(["runs", 0, "evaluation", "question_set", "name"], "first-plot"),
     "$.runs[0].evaluation.question_set.name"),
    ("judge-prompt-hash-mismatch", _set(["runs", 0, "evaluation", "judge", "prompt_sha256", "aligned"], "cd" * 32),
     "$.runs[0].evaluation.judge.prompt_sha256.aligned"),
    ("content-hash-mismatch", _set(["runs", 0, "seeds", "train"], 99, finish=False), "$.content_sha256"),
    ("bad-adapter-hash", _set(["runs", 0, "adapter", "sha256"], "z" * 64), "$.runs[0].adapter.sha256"),
    ("question-not-in-set", _question_not_in_set, "$.runs[0].evaluation.samples[0].question_id"),
    ("model-path-traversal", _set(["runs", 0, "model", "id"], "../../etc/passwd"), "$.runs[0].model.id"),
    ("model-absolute-path", _set(["runs", 0, "model", "id"], "/root/.ssh/id_rsa"), "$.runs[0].model.id"),
    ("model-file-url", _set(["runs", 0, "model", "id"], "file:///etc/passwd"), "$.runs[0].model.id"),
    ("dataset-path", _set(["runs", 0, "dataset", "name"], "../secrets"), "$.runs[0].dataset.name"),
    ("html-in-optimizer", _set(["runs", 0, "optimizer", "name"], "<script>alert(1)</script>"),
     "$.runs[0].optimizer.name"),
    ("html-in-model", _set(["runs", 0, "model", "id"], 'org/<img src=x onerror="alert(1)">'), "$.runs[0].model.id"),
    ("long-string", _set(["runs", 0, "spectra", 0, "module"], "a" * 100_000), "$.runs[0].spectra[0].module"),
    ("too-many-samples", _many_samples, "$.runs[0].evaluation.samples"),
    ("curve-not-increasing", _bad_curve, "$.runs[0].training.curve"),
    ("late-sample-bad-raw", _set(["runs", 1, "evaluation", "samples", 10, "raw_aligned"], "cos\nsystem\n(S'ls'\ntR."),
     "$.runs[1].evaluation.samples[10].raw_aligned"),
    ("late-sample-markup-id", _set(["runs", 1, "evaluation", "samples", 7, "sample_id"], "<b>x</b>"),
     "$.runs[1].evaluation.samples[7].sample_id"),
    ("late-sample-extra-field", _set(["runs", 2, "evaluation", "samples", 30, "answer"], "text"),
     "$.runs[2].evaluation.samples[30]: Additional properties"),
    ("eval-after-training", _set(["runs", 0, "evaluation", "step"], 10_000), "$.runs[0].evaluation.step"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_file_rejected_store_unchanged(case, valid, target, tmp_path, capsys):
    _name, mutate, expect = case
    _, obj = valid
    data = mutate(copy.deepcopy(obj))
    f = tmp_path / "hostile.json"
    f.write_bytes(data if isinstance(data, bytes) else _text(data))
    before = _state(target)
    rc, out, err = _cli(["leaderboard", "ingest", str(f), "--store", str(target)], capsys)
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert expect in err, err
    assert _state(target) == before
    rc, _, err2 = _cli(["submission", "validate", str(f)], capsys)
    assert rc == 2 and expect in err2


def test_huge_file_rejected_before_reading(valid, target, tmp_path, capsys):
    from evilbench.leaderboard.submission import MAX_BYTES

    f = tmp_path / "huge.json"
    with open(f, "wb") as fh:  # sparse: the size is over the limit, the disk holds almost nothing
        fh.write(b'{"runs": [')
        fh.truncate(MAX_BYTES + 10)
    before = _state(target)
    rc, _, err = _cli(["leaderboard", "ingest", str(f), "--store", str(target)], capsys)
    assert rc == 2 and "$: file is" in err and "the limit is" in err
    assert _state(target) == before

