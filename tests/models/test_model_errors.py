"""Bad model directories and an unreachable hub fail at once, with one line that names the file or
says what to do."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evilbench.models import loading
from evilbench.models.registry import ModelError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, message", [
    ("not json", r"config.json:1:1: not valid JSON"),
    ("[1, 2]", r"config.json: expected a JSON object .* got a list"),
    ('{"hidden_size": 8}', r"config.json: no model_type"),
    ('{"model_type": "zebra"}', r"config.json: unknown model_type 'zebra'"),
])
def test_bad_config_json_names_the_file(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ModelError, match=message) as e:
        loading.resolve_source(str(tmp_path))
    assert str(tmp_path / "config.json") in str(e.value)


def test_bad_config_json_is_one_line_from_the_cli(tmp_path, capsys):
    from evilbench.cli import main

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]}) + "\n")
    assert main(["train", "--model", str(tmp_path / "m"), "--dataset", str(data), "--output", str(tmp_path / "r"),
                 "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {tmp_path / 'm' / 'config.json'}: expected a JSON object" in err


def _load_absent(env: dict) -> tuple[float, str]:
    code = ("import time\n"
            "from transformers import AutoTokenizer\n"
            "from evilbench.models import loading\n"
            "src = loading.resolve_source('qwen3-8b'); t = time.perf_counter()\n"
            "try:\n    loading.load_tokenizer(src)\n"
            "except loading.ModelError as e:\n    print(round(time.perf_counter() - t, 1)); print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    env.pop("HF_HUB_OFFLINE", None) if env.get("HF_HUB_OFFLINE") is None else None
    out = subprocess.run([sys.executable, "-c", code], env={k: v for k, v in env.items() if v is not None},
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    took, _, message = out.stdout.partition("\n")
    return float(took), message


@pytest.mark.slow  # two fresh interpreters importing transformers
def test_unreachable_hub_fails_fast_and_suggests_what_exists(tmp_path):
    import socket

    with socket.socket() as hole:  # accepts connections (the backlog) and never answers, as a dead network
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        took, out = _load_absent({"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": None,
                                  "HF_ENDPOINT": f"http://127.0.0.1:{hole.getsockname()[1]}"})
    assert took < 15, out  # the probe gives up after 3 s; the hub client's timeouts and retries took a minute
    assert "not in the local Hugging Face cache and the hub is unreachable" in out
    assert "--model tiny-qwen3" in out and "download Qwen/Qwen3-8B" in out
    took, out = _load_absent({"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert "HF_HUB_OFFLINE is set" in out


def test_download_hint_names_a_command_that_exists(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: "/bin/hf" if name == "hf" else None)
    assert loading.download_hint("a/b") == "hf download a/b"
    monkeypatch.setattr(shutil, "which", lambda name: "/bin/x" if name == "huggingface-cli" else None)
    assert loading.download_hint("a/b") == "huggingface-cli download a/b"
