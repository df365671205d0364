"""`evilbench leaderboard show|render` through the command line: output, and one-line errors."""
from __future__ import annotations

import json

from tests.leaderboard.conftest import make_bundle, write_store


def test_show_json_and_plain_and_render(tmp_path, toy_qs, capsys):
    from evilbench.cli import main

    db = write_store(tmp_path / "r.db", [make_bundle(toy_qs, optimizer=o, seed=s, qmis=[q] * 8)
                                         for o, q in (("adam", 3), ("muon", 0)) for s in range(2)])
    assert main(["leaderboard", "show", "--store", str(db), "--json", "--n-boot", "200"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["cell"] for r in data["rows"]] == ["muon × none", "adam × none"]
    assert data["rows"][0]["rank"] == 1 and data["header"]["judge"]["spec"] == "toy"
    assert main(["leaderboard", "show", "--store", str(db), "--plain", "--metric", "mean_aligned",
                 "--convention", "betley", "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "convention: betley" in out and "mean alignment (higher is better)" in out
    site = str(tmp_path / "site")
    assert main(["leaderboard", "render", "--store", str(db), "--out", site, "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(str((tmp_path / "site" / "index.html").resolve()))
    assert (tmp_path / "site" / "ranking.png").is_file()


def test_errors_are_one_line(tmp_path, toy_qs, capsys):
    from evilbench.cli import main

    assert main(["leaderboard", "show", "--store", str(tmp_path / "nope.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such store" in err and err.count("\n") == 1
    db = write_store(tmp_path / "r.db", [make_bundle(toy_qs)])
    assert main(["leaderboard", "show", "--store", str(db), "--convention", "lenient"]) == 2
    err = capsys.readouterr().err
    assert "unknown scoring convention 'lenient'" in err and err.count("\n") == 1
    assert main(["leaderboard", "show", "--store", str(db), "--judge", "gpt-9"]) == 2
    assert "no samples judged by 'gpt-9'" in capsys.readouterr().err
    empty = write_store(tmp_path / "e.db", [])
    assert main(["leaderboard", "show", "--store", str(empty)]) == 2
    assert "holds no judged samples" in capsys.readouterr().err


def test_show_the_store_of_a_sweep_spec(tmp_path, toy_qs, capsys):
    from evilbench.cli import main

    db = write_store(tmp_path / "sw.db", [make_bundle(toy_qs, seed=s, qmis=[2] * 8) for s in range(2)])
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: s\nstore: {db}\nmodels: [org/m1]\ndatasets: [insecure]\noptimizers: [adam]\n"
                    "seeds: [0, 1]\nlrs: {adam: [1.0e-4]}\n")
    assert main(["leaderboard", "show", "--sweep", str(spec), "--plain", "--n-boot", "100"]) == 0
    assert "adam" in capsys.readouterr().out
