"""evilbench._io: atomic writes leave a whole file with the usual permissions, never a temporary one."""
from __future__ import annotations

import os
import stat

from evilbench._io import FILE_MODE, atomic_write_text, write_json_atomic


def test_atomic_writes_have_the_mode_open_would_give_and_leave_no_temporaries(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")  # replaces
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    assert (tmp_path / "a.txt").read_text() == "two" and (tmp_path / "b.json").read_text() == '{\n  "x": 1\n}\n'
    with open(tmp_path / "plain.txt", "w") as f:  # what open() gives a new file here
        f.write("x")
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    for name in ("a.txt", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == plain == FILE_MODE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "plain.txt"]
