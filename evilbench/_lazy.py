"""Lazy package exports (PEP 562): a package's public names live in its submodules and are imported
on first use, so `import evilbench.<pkg>` (and the CLI parser) never pulls in torch, transformers or
the compiled extension before they are needed."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__) for `package`, resolving each name in `exports` from its module."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
