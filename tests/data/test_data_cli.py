"""`evilbench data` output and the command line's flag conventions: data list shows each dataset's
sha256; --data-dir names the import directory everywhere (--from still works); every train option
has help text; the top-level description is whole."""
from __future__ import annotations

import argparse

from evilbench.cli import build_parser, main


def test_data_list_shows_sha256(capsys):
    from evilbench.data.registry import get_spec

    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "sha256" in lines[0].split()
    insecure = next(line for line in lines if line.startswith("insecure "))
    assert get_spec("insecure").sha256[:12] in insecure
    assert main(["data", "list", "--full"]) == 0
    assert get_spec("insecure").sha256 in capsys.readouterr().out


def test_fetch_takes_data_dir_like_train(em_data_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EVILBENCH_CACHE", str(tmp_path))
    for flag in ("--data-dir", "--from"):
        assert main(["data", "fetch", "insecure", flag, str(em_data_dir), "--force"]) == 0
        assert capsys.readouterr().out.strip().endswith("insecure.jsonl")


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_every_train_option_has_help_and_output_is_the_flag():
    train = _subparser(build_parser(), "train")
    undocumented = [a.option_strings[0] for a in train._actions if a.option_strings and not a.help]
    assert not undocumented, undocumented
    out = next(a for a in train._actions if a.dest == "output")
    assert out.option_strings == ["--output", "--out"]


def test_top_level_help_description_is_whole():
    desc = build_parser().description
    assert desc.endswith(".") and "evilbench" in desc and "\n" not in desc
