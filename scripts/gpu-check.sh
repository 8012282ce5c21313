#!/usr/bin/env bash
# The GPU check of issue #5, for a CUDA host without a Rust toolchain or internet:
#   1. the parity tests on the CUDA backend (tiny fixtures, the same tests CI runs on CPU
#      and wgpu);
#   2. the GPU benchmark: benches/gpu.rs (ella, F16 and BF16) and scripts/bench_gpu.py
#      (PyTorch/diffusers, float16 and bfloat16) on the same real-size configs;
# then one summary. Build the binaries first, on any x86-64 machine:
#     scripts/build-gpu-check.sh          # → .gpu/bins.tar.gz
#     scripts/gpu-check.sh [images]       # on the GPU host, from the repository root
# diffusers is taken from wheels in .whl/ when the host lacks it (scripts/requirements.txt
# pins the version). Logs go to $OUT (or .gpu/) as gpu-check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-2}
LOGDIR=${OUT:-.gpu}
mkdir -p "$LOGDIR"
LOG=$LOGDIR/gpu-check.log
exec > >(tee "$LOG") 2>&1

step() { echo; echo "=== $1 ($(date +%H:%M:%S))"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
tar -xzf .gpu/bins.tar.gz -C .gpu
BIN=.gpu/bin
# cudarc loads the driver and NVRTC at run time: find NVRTC (toolkit or pip wheels).
for dir in $(find /usr/local /usr/lib /opt -name 'libnvrtc.so*' -not -path '*/stubs/*' -printf '%h\n' 2>/dev/null | sort -u); do
    export LD_LIBRARY_PATH=$dir:${LD_LIBRARY_PATH:-}
done
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
export ELLA_FIXTURES=$PWD/ella-core/tests/fixtures
export RUST_BACKTRACE=1
# ELLA_GPU_DEBUG=1: CubeCL logs every kernel compilation and autotune run to $LOGDIR/cubecl.log.
if [ "${ELLA_GPU_DEBUG:-0}" = 1 ]; then
    export CUBECL_DEBUG_LOG=$LOGDIR/cubecl.log
fi

step "parity tests on CUDA"
TESTS_OK=1
# Tiny shapes: correctness only, so the cheapest autotune level.
CUBECL_AUTOTUNE_LEVEL=minimal timeout 90 "$BIN/parity" cuda:: --nocapture --test-threads 4 || TESTS_OK=0

# Most important first; each part has its own time limit so that one slow part cannot
# take the others' device time.
# Most important first; each part has its own time limit so that one slow part cannot
# take the others' device time. ELLA_SKIP_TORCH=1 leaves PyTorch out (a rerun).
torch_bench() {
    [ "${ELLA_SKIP_TORCH:-0}" = 1 ] && return
    if ! python3 -c 'import diffusers' 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    PYTHONUNBUFFERED=1 timeout "$1" python3 scripts/bench_gpu.py "$2" "$IMAGES"
}
step "benchmark F16: ella (Rust, Burn CUDA), then PyTorch/diffusers"
timeout 100 "$BIN/gpu" f16 "$IMAGES"
torch_bench 90 float16

step "benchmark BF16: ella, then PyTorch/diffusers"
timeout 80 "$BIN/gpu" bf16 "$IMAGES"
torch_bench 75 bfloat16

step "summary"
nvidia-smi --query-gpu=name --format=csv,noheader
if [ $TESTS_OK = 1 ]; then echo "parity tests on CUDA: passed"; else echo "parity tests on CUDA: FAILED"; fi
grep -h '^test result\|^RESULT\|pipeline vs\|error vs\|pixel values within' "$LOG" | sed 's/^RESULT //'
