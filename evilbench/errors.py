"""The one base class of expected failures: bad input, a missing or corrupt file, a locked run
directory. The `evilbench` command prints these as one line `error: ...` and exits 2 (a traceback only
with --debug); anything else is a bug and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """An expected failure whose message alone tells the user what to do."""
