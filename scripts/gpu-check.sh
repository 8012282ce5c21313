#!/usr/bin/env bash
# The GPU check of issue #5, for a CUDA host without a Rust toolchain or internet:
#   tests  the parity tests on the CUDA backend (tiny fixtures, the same tests CI runs on the
#          CPU backends and wgpu);
#   f16    benches/gpu.rs (ella) and scripts/bench_gpu.py (PyTorch/diffusers) in F16 on the
#          same real-size configs; bf16 the same in BF16;
# then one summary. Build the binaries first, on any x86-64 machine:
#     scripts/build-gpu-check.sh                        # → .gpu/bins.tar.gz
#     scripts/gpu-check.sh [IMAGES] [PARTS]             # on the GPU host, from the repo root
# PARTS defaults to "tests f16 bf16"; a device session's 10-minute calls fit "tests f16" and
# "bf16" (the first image on a cold CubeCL kernel cache compiles and autotunes for minutes).
# diffusers is taken from wheels in .whl/ when the host lacks it (scripts/requirements.txt
# pins the version). ELLA_SKIP_TORCH=1 leaves PyTorch out; ELLA_GPU_DEBUG=1 makes CubeCL log
# every kernel compilation and autotune run. Logs go to $OUT (or .gpu/): gpu-check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-2}
PARTS=${2:-tests f16 bf16}
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

TESTS_OK=skipped
if [[ " $PARTS " == *" tests "* ]]; then
    step "parity tests on CUDA"
    # Tiny shapes: correctness only, so the cheapest autotune level.
    TESTS_OK=passed
    CUBECL_AUTOTUNE_LEVEL=minimal timeout 240 "$BIN/parity" cuda:: --nocapture --test-threads 4 \
        || TESTS_OK=FAILED
fi

torch_bench() {
    [ "${ELLA_SKIP_TORCH:-0}" = 1 ] && return
    if ! python3 -c 'import diffusers' 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    PYTHONUNBUFFERED=1 timeout 90 python3 scripts/bench_gpu.py "$1" "$IMAGES"
}
for dtype in f16 bf16; do
    [[ " $PARTS " == *" $dtype "* ]] || continue
    step "benchmark $dtype: ella (Rust, Burn CUDA), then PyTorch/diffusers"
    timeout 300 "$BIN/gpu" "$dtype" "$IMAGES"
    torch_bench "$([ $dtype = f16 ] && echo float16 || echo bfloat16)"
done

step "summary"
nvidia-smi --query-gpu=name --format=csv,noheader
echo "parity tests on CUDA: $TESTS_OK"
grep -h '^test result\|^RESULT\|pipeline vs\|error vs\|pixel values within' "$LOG" | sed 's/^RESULT //'
