#!/usr/bin/env bash
# One device session for the spectral kernels: build, CUDA tests, benchmarks, training-step overhead.
# Usage (repository root, on the GPU machine): OUT=/some/dir bash bench/spectral_device.sh
set -u
OUT=${OUT:-/tmp/spectral_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
t0=$(date +%s)
EVILBENCH_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
  || { echo "BUILD FAILED"; tail -50 "$OUT/build.log"; exit 1; }
echo "build $(( $(date +%s) - t0 )) s"
timeout 150 python3 -m pytest tests/kernels/test_spectral_cuda.py -q -x -p no:cacheprovider > "$OUT/tests_cuda.log" 2>&1
echo "cuda tests rc=$? $(( $(date +%s) - t0 )) s"; grep -E "passed|failed|Error|error|assert" "$OUT/tests_cuda.log" | tail -25
EVILBENCH_BENCH_DENSE=0 timeout 200 python3 -m pytest bench/bench_spectral.py -k cuda --benchmark-only \
  --benchmark-json="$OUT/bench_cuda.json" -q -p no:cacheprovider > "$OUT/bench_cuda.log" 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 )) s"; grep -E "passed|failed|Error" "$OUT/bench_cuda.log" | tail -8
python3 bench/report.py "$OUT/bench_cuda.json" --no-merge --markdown "$OUT/bench_cuda.md" 2>&1 | tail -20
timeout 90 python3 -m bench.spectral_profile --out "$OUT/profile.json" > "$OUT/profile.log" 2>&1
echo "profile rc=$? $(( $(date +%s) - t0 )) s"; cat "$OUT/profile.log" | grep -v Warning | tail -40
timeout 150 python3 -m bench.spectral_train_overhead --out "$OUT/train_overhead.json" > "$OUT/train.log" 2>&1
echo "train rc=$? $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/train.log"
