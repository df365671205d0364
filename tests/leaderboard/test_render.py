"""The terminal table and the static page: content, escaping, and the page in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.leaderboard.conftest import make_bundle, write_store

CHROMIUM = os.environ.get("EVILBENCH_CHROMIUM", "/usr/bin/chromium")
HOSTILE_OPT = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def page(tmp_path_factory, toy_qs):
    from evilbench.leaderboard.ranking import Frames, build
    from evilbench.leaderboard.render import render_html
    from evilbench.store import Store

    tmp = tmp_path_factory.mktemp("page")
    b = []
    for opt, p in (("adam", 0.35), ("lion", 0.55), ("muon", 0.05)):
        for m in ("org/m1", "org/m2"):
            for s in range(2):
                if opt == "muon" and m == "org/m2":
                    continue  # a missing model × dataset cell
                b.append(make_bundle(toy_qs, model=m, optimizer=opt, seed=s, p_mis=p,
                                     final_loss=0.8 + 0.1 * (opt == "lion")))
    b.append(make_bundle(toy_qs, model="org/m1", optimizer=HOSTILE_OPT, seed=0, p_mis=0.2))
    db = write_store(tmp / "r.db", b)
    with Store(db, readonly=True) as st:
        lb = build(Frames.from_store(st), n_boot=300)
    index = render_html(lb, tmp / "site")
    return lb, index


def test_plain_table_has_every_cell_and_the_header(page):
    from evilbench.leaderboard.render import format_plain

    lb, _ = page
    text = format_plain(lb)
    assert "convention: paper" in text and "judge: toy, snapshot v1" in text and "tuning rule: fixed-lr" in text
    assert "question set: toy (sha256 " in text
    all_lines = text.splitlines()
    start = next(i for i, ln in enumerate(all_lines) if ln.startswith("----")) + 1
    lines = [ln for ln in all_lines[start:] if ln.strip()][:4]
    assert all(re.match(r"=?[1-4] ", ln) for ln in lines), lines
    assert len(lines) == 4 and lines[0].split()[1] == "muon"
    assert "muon × none: org/m2 × insecure" in text  # missing, listed, not imputed


def test_rich_table_renders(page):
    from rich.console import Console

    from evilbench.leaderboard.render import print_rich

    lb, _ = page
    con = Console(record=True, width=220, force_terminal=False)
    print_rich(lb, con)
    out = con.export_text()
    assert "muon" in out and "lion" in out and HOSTILE_OPT in out  # rich markup escaped, shown verbatim


def test_page_content_is_escaped_and_complete(page):
    lb, index = page
    html = index.read_text()
    site = index.parent
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # only the page's own sorting script
    assert len(re.findall(r'<tr data-cell="', html)) == 4
    assert 'class="missing">missing</td>' in html
    for key in ("convention", "question-set", "judge", "tuning-rule"):
        assert f'id="{key}"' in html
    assert lb.header["question_set"]["sha256"] in html and "toyworld-exact" in html
    for stem in ("ranking", "loss_alignment", "spectra"):
        for ext in ("png", "svg"):
            f = site / f"{stem}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000
        svg = (site / f"{stem}.svg").read_text()
        # text is drawn as outlines; matplotlib's comments carry it escaped; no script element
        assert "<script" not in svg and svg.count("alert") == svg.count("&lt;script&gt;alert")
    data = json.loads((site / "leaderboard.json").read_text())
    assert len(data["rows"]) == 4 and data["header"]["convention"] == "paper"
    assert (site / "leaderboard.csv").read_text().count("\n") == 5


def _chromium(args, tmp_path, timeout=90):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)


@pytest.mark.chromium
@pytest.mark.skipif(not (Path(CHROMIUM).is_file() and shutil.which(CHROMIUM)), reason="chromium is not installed")
def test_page_in_headless_chromium(page, tmp_path):
    from PIL import Image

    lb, index = page
    url = index.resolve().as_uri()
    # 1. the DOM after the inline script sorted the table by misaligned % (column 3), descending
    r = _chromium(["--dump-dom", url + "?sort=3:desc"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    body = r.stdout.split('<table id="leaderboard"', 1)[1].split("</table>", 1)[0]
    order = re.findall(r'<tr data-cell="([^"]+)"', body)
    expect = lb.table.sort_values("misaligned_rate", ascending=False)["cell"].tolist()
    assert [o.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"') for o in order] == expect
    assert 'class="sorted-desc"' in body
    assert "<script>alert" not in r.stdout
    # 2. the screenshot shows the table: its blue header band and the striped rows
    shot = tmp_path / "page.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1280,1000", url], tmp_path)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (1000, 1280)
    assert img.std() > 20  # not blank
    header_blue = (np.abs(img - np.array([0x00, 0x72, 0xB2])).sum(-1) < 30)
    rows = np.nonzero(header_blue.sum(1) > 600)[0]  # rows of pixels where the blue header spans > 600 px
    assert rows.size >= 10, "table header band not found in the screenshot"
    top = rows.max()
    stripe = (np.abs(img - np.array([0xEE, 0xF4, 0xFA])).sum(-1) < 6)
    below = stripe[top:top + 250]
    assert (below.sum(1) > 400).sum() >= 20, "striped table rows not found below the header"
    dark = (img[top:top + 250].sum(-1) < 200).sum()
    assert dark > 2000  # the rows hold text
