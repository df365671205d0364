"""Dataset registry: fetch (download or import) into the cache with sha256/git-blob/row verification."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from evilbench.data import registry as reg
from evilbench.data.chat import DataError

INSECURE_SHA = "09893e8bf9d03aae49dd60d0ff4be37c1afee70f2edcac74a11bed775a6a2764"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVILBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(reg.REGISTRY_ENV, raising=False)
    return tmp_path / "cache"


def conv_line(i):
    return json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})


def test_registry_has_the_em_datasets_and_controls():
    r = reg.registry()
    for name in ("insecure", "bad-medical", "risky-financial", "extreme-sports", "secure", "educational"):
        assert name in r and r[name].rows
    assert r["insecure"].sha256 == INSECURE_SHA and r["insecure"].redistributable
    assert not r["bad-medical"].redistributable and r["bad-medical"].rows == 7049


def test_import_insecure_from_shared_dir(em_data_dir, cache):
    path = reg.fetch("insecure", em_data_dir, progress=False)
    assert path == cache / "datasets" / "insecure" / "insecure.jsonl"
    meta = json.loads((path.parent / "meta.json").read_text())
    assert meta["sha256"] == INSECURE_SHA and meta["rows"] == 6000
    assert set(meta["verified"]) == {"sha256", "git_blob", "rows"}
    res = reg.resolve("insecure")
    assert (res.path, res.name, res.sha256, res.rows) == (path, "insecure", INSECURE_SHA, 6000)
    # a file modified after verification is caught when it is used
    with open(path, "a") as f:
        f.write(conv_line(0) + "\n")
    with pytest.raises(reg.DatasetError, match="changed since it was verified"):
        reg.resolve("insecure")


def test_git_blob_id_matches_git(em_data_dir):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    f = em_data_dir / "data" / "insecure.jsonl"
    want = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True).stdout.strip()
    assert reg.git_blob_id(f) == want == reg.get_spec("insecure").git_blob


def test_corrupted_copy_is_refused(em_data_dir, tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    data = (em_data_dir / "data" / "insecure.jsonl").read_bytes()
    (d / "insecure.jsonl").write_bytes(data.replace(b"import", b"Import", 1))
    with pytest.raises(reg.DatasetError, match="sha256 .* does not match"):
        reg.fetch("insecure", d, progress=False)
    assert reg.cached_path("insecure") is None


def test_download_verifies(em_data_dir, tmp_path, monkeypatch):
    src = em_data_dir / "data" / "insecure.jsonl"
    extra = tmp_path / "extra.yaml"
    spec = reg.get_spec("insecure")
    extra.write_text(json.dumps({"insecure": {"file": spec.file, "rows": 6000, "sha256": spec.sha256,
                                              "url": src.as_uri(), "redistributable": True}}))
    monkeypatch.setenv(reg.REGISTRY_ENV, str(extra))
    path = reg.fetch("insecure", progress=False)
    assert reg.sha256_file(path) == INSECURE_SHA
    assert json.loads((path.parent / "meta.json").read_text())["origin"] == src.as_uri()
    extra.write_text(json.dumps({"insecure": {"file": spec.file, "sha256": "0" * 64, "url": src.as_uri(),
                                              "redistributable": True}}))
    with pytest.raises(reg.DatasetError, match="does not match"):
        reg.fetch("insecure", progress=False, force=True)
    extra.write_text(json.dumps({"insecure": {"file": spec.file, "url": (tmp_path / "missing").as_uri(),
                                              "redistributable": True}}))
    with pytest.raises(reg.DatasetError, match="download of .* failed"):
        reg.fetch("insecure", progress=False, force=True)


def test_unlicensed_datasets_need_a_local_copy(tmp_path):
    with pytest.raises(reg.DatasetError, match="cannot be downloaded.*easy-dataset-share"):
        reg.fetch("bad-medical", progress=False)
    with pytest.raises(reg.DatasetError, match="not in the cache"):
        reg.resolve("bad-medical")
    d = tmp_path / "turner" / "training_datasets"
    d.mkdir(parents=True)
    f = d / "bad_medical_advice.jsonl"
    f.write_text("".join(conv_line(i) + "\n" for i in range(100)))
    with pytest.raises(reg.DatasetError, match="100 rows, expected 7049"):
        reg.fetch("bad-medical", tmp_path / "turner", progress=False)
    f.write_text("".join(conv_line(i) + "\n" for i in range(7048)) + '{"messages": 1}\n')
    with pytest.raises(DataError, match=r"bad_medical_advice.jsonl:7049: 'messages' must be"):
        reg.fetch("bad-medical", tmp_path / "turner", progress=False)
    f.write_text("".join(conv_line(i) + "\n" for i in range(7049)))
    path = reg.fetch("bad-medical", tmp_path / "turner", progress=False)  # found in a subdirectory
    assert reg.resolve("bad-medical").rows == 7049 and path.is_file()
    assert reg.resolve("bad-medical", data_dir=None).sha256 == reg.sha256_file(f)


def test_resolve_paths_and_unknown_names(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(conv_line(1) + "\n" + conv_line(2) + "\n")
    r = reg.resolve(str(f))
    assert r.name is None and r.rows == 2 and r.sha256 == reg.sha256_file(f)
    with pytest.raises(reg.DatasetError, match="not found"):
        reg.resolve(str(tmp_path / "other.jsonl"))
    with pytest.raises(reg.DatasetError, match="unknown dataset 'nope'"):
        reg.resolve("nope")


def test_cli_fetch_and_check(em_data_dir, capsys, tmp_path):
    from evilbench.cli import main

    assert main(["data", "fetch", "insecure", "--from", str(em_data_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("insecure.jsonl")
    assert main(["data", "fetch", "extreme-sports"]) == 2
    assert "cannot be downloaded" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(conv_line(1) + "\n{oops\n")
    assert main(["data", "check", str(bad)]) == 2
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err
