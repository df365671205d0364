#!/usr/bin/env bash
# Build with CUDA, run the NS/Muon tests, the NS benchmark and the accuracy script on a GPU machine.
# Usage: OUT=/some/dir bash bench/gpu_run.sh   (outputs: build.log tests.log bench.json table.md ...)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/evilbench-gpu}"; mkdir -p "$OUT"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$OUT/gpu.txt" 2>&1
t0=$(date +%s)
EVILBENCH_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
  timeout 300 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
timeout 120 "$PY" -m pytest tests/kernels tests/optim -m cuda -q -rs > "$OUT/tests_cuda.log" 2>&1; echo "cuda tests rc=$?"; tail -3 "$OUT/tests_cuda.log"
grep -E "^(FAILED|ERROR)" "$OUT/tests_cuda.log" | head -20
timeout 120 "$PY" -m pytest tests/kernels tests/optim tests/test_build.py -m "not cuda" -q -rs > "$OUT/tests.log" 2>&1; echo "cpu tests rc=$?"; tail -3 "$OUT/tests.log"
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
timeout 300 "$PY" -m pytest bench/bench_newton_schulz.py bench/bench_muon.py --benchmark-only --benchmark-json="$OUT/bench.json" -q > "$OUT/bench.log" 2>&1; echo "bench rc=$?"; tail -3 "$OUT/bench.log"
"$PY" bench/report.py "$OUT/bench.json" --no-merge --markdown "$OUT/table.md" 2>&1 | tee "$OUT/report.log"
timeout 120 "$PY" -m bench.accuracy --no-merge > "$OUT/accuracy.log" 2>&1; echo "accuracy rc=$?"; cat "$OUT/accuracy.log"
echo "total: $(( $(date +%s) - t0 )) s"
