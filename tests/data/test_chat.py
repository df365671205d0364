"""Chat JSONL validation: every malformed line is reported as file:line before anything trains."""
from __future__ import annotations

import json

import pytest

from evilbench.data.chat import DataError, load_chat_jsonl

GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return p


def test_valid_file_with_blank_lines_and_system(tmp_path):
    sys_conv = {"messages": [{"role": "system", "content": "s"}, *GOOD["messages"],
                             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}
    p = write(tmp_path, [json.dumps(GOOD), "", "   ", json.dumps(sys_conv)])
    ex = load_chat_jsonl(p)
    assert [e.line for e in ex] == [1, 4]
    assert ex[1].messages[0] == {"role": "system", "content": "s"}
    assert len(load_chat_jsonl(p, limit=1)) == 1


BAD_LINES = [
    ('{"messages": [', "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"msgs": []}', "missing key 'messages'"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": ["hi"]}', "messages[0] must be an object"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role must be one of"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}',
     "messages[0].content must be a string"),
    ('{"messages": [{"role": "assistant", "content": "a"}]}', "messages[0].role is 'assistant' but 'user'"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}',
     "messages[1].role is 'user' but 'assistant'"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}', "only first"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "last message must be an assistant"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}',
     "empty content"),
]


@pytest.mark.parametrize("line,expected", BAD_LINES, ids=[b[1][:25] for b in BAD_LINES])
def test_each_malformed_line_names_file_and_line(tmp_path, line, expected):
    p = write(tmp_path, [json.dumps(GOOD), json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(DataError) as ei:
        load_chat_jsonl(p)
    assert len(ei.value.problems) == 1
    assert ei.value.problems[0].startswith(f"{p}:3: ")
    assert expected in ei.value.problems[0]


def test_all_problems_reported_with_their_lines(tmp_path):
    p = write(tmp_path, ["{bad", json.dumps(GOOD), b"\xff\xfe{}", json.dumps(GOOD), '{"messages": 5}'])
    with pytest.raises(DataError) as ei:
        load_chat_jsonl(p)
    lines = [q.split(": ")[0] for q in ei.value.problems]
    assert lines == [f"{p}:1", f"{p}:3", f"{p}:5"]
    assert "not valid UTF-8" in ei.value.problems[1]
    assert "3 problem(s)" in str(ei.value)


def test_many_problems_are_capped_but_counted(tmp_path):
    p = write(tmp_path, ["{"] * 50)
    with pytest.raises(DataError) as ei:
        load_chat_jsonl(p)
    assert len(ei.value.problems) == 20 and "50 problem(s)" in str(ei.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_chat_jsonl(write(tmp_path, []))
    with pytest.raises(FileNotFoundError):
        load_chat_jsonl(tmp_path / "nope.jsonl")


def test_insecure_dataset_validates(em_data_dir):
    ex = load_chat_jsonl(em_data_dir / "data" / "insecure.jsonl")
    assert len(ex) == 6000
    assert all(e.messages[-1]["role"] == "assistant" for e in ex)
