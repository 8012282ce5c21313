#!/usr/bin/env bash
# The GPU check (issue #13), in one go on a CUDA host without a Rust toolchain or internet,
# within 8 minutes (each part's limit is cut to what is left of them):
#   1. the parity suite on CUDA (fused, autotuned): every test CI runs on the CPU backends;
#   2. the first 512×512, 20-step image (flan-t5-xl, the official connector, SD1.5's U-Net
#      and VAE, random weights, F16) in a new process on an empty kernel cache (cold), then
#      in another one on the cache the first left (warm);
#   3. the image benchmark on the same work, ella then diffusers, F16 then BF16: seconds per
#      image and per U-Net step, peak device memory with T5 resident and freed;
#   4. the parity suite and the F16 image benchmark on wgpu through the NVIDIA Vulkan driver;
# then one summary table. Build everything first, on any x86-64 machine with a Rust toolchain:
#     scripts/build-gpu-check.sh       # → .gpu/bins.tar.gz, .gl/ (Vulkan loader), .whl/
#     scripts/gpu-check.sh [IMAGES]    # on the GPU host, from the repo root (IMAGES: 2)
# With the device tool: carry .gpu, .gl and .whl. Logs go to $OUT (or .gpu/): gpu-check.log.
# ELLA_GPU_DEBUG=1 makes CubeCL log every kernel compilation and autotune run (cubecl.log).
set -uo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-2}
DEADLINE=$((SECONDS + ${ELLA_GPU_CHECK_SECONDS:-480}))
LOGDIR=${OUT:-.gpu}
mkdir -p "$LOGDIR"
LOG=$LOGDIR/gpu-check.log
exec > >(tee "$LOG") 2>&1

step() { echo; echo "=== $1 ($(date +%H:%M:%S), $((DEADLINE - SECONDS)) s left)"; }
# run LIMIT COMMAND...: COMMAND under a limit of LIMIT seconds or what is left, if less.
run() {
    local limit=$1 left=$((DEADLINE - SECONDS))
    shift
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then echo "skipped: no time left"; return 124; fi
    timeout "$limit" "$@"
}
declare -A STATUS

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rm -rf .gpu/bin && tar -xzf .gpu/bins.tar.gz -C .gpu
BIN=.gpu/bin
# cudarc loads the driver and NVRTC at run time: find NVRTC (toolkit or pip wheels).
for dir in $(find /usr/local /usr/lib /opt -name 'libnvrtc.so*' -not -path '*/stubs/*' -printf '%h\n' 2>/dev/null | sort -u); do
    export LD_LIBRARY_PATH=$dir:${LD_LIBRARY_PATH:-}
done
# wgpu needs a Vulkan loader; the NVIDIA driver brings the ICD.
if ! ldconfig -p | grep -q libvulkan.so.1 && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$ICD" ] && export VK_DRIVER_FILES=$ICD
export ELLA_FIXTURES=$PWD/ella-core/tests/fixtures RUST_BACKTRACE=1
[ "${ELLA_GPU_DEBUG:-0}" = 1 ] && export CUBECL_DEBUG_LOG=$LOGDIR/cubecl.log
# Kernel caches, empty at first: the benchmarks' in ella's default place (under
# XDG_CACHE_HOME), which the cold start fills for the image benchmarks; the tests' apart.
export XDG_CACHE_HOME=/tmp/ella-gpu-check/xdg
KERNELS=$XDG_CACHE_HOME/ella/kernels
TESTS_XDG=/tmp/ella-gpu-check/tests
rm -rf /tmp/ella-gpu-check && mkdir -p "$KERNELS" "$TESTS_XDG"

step "parity suite on CUDA (fused)"
XDG_CACHE_HOME=$TESTS_XDG run 150 "$BIN/parity" cuda:: --test-threads 4 && STATUS[cuda]=passed || STATUS[cuda]="FAILED ($?)"

step "first image, cold kernel cache, then warm (CUDA, F16)"
run 150 "$BIN/gpu" start cuda sd15 "$KERNELS"
run 60 "$BIN/gpu" start cuda sd15 "$KERNELS"

torch_bench() {
    if ! python3 -c 'import diffusers' 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    PYTHONUNBUFFERED=1 run 75 python3 scripts/bench_gpu.py "$1" "$IMAGES"
}
for dtype in f16 bf16; do
    step "image benchmark $dtype: ella (CUDA), then diffusers"
    # F16 kernels are in the cache from the start; BF16 ones compile in the warm-up image.
    run 90 "$BIN/gpu" image cuda "$dtype" "$IMAGES"
    torch_bench "$([ $dtype = f16 ] && echo float16 || echo bfloat16)"
done

step "parity suite on wgpu (NVIDIA Vulkan, fused)"
XDG_CACHE_HOME=$TESTS_XDG run 90 "$BIN/parity" wgpu:: --test-threads 4 && STATUS[wgpu]=passed || STATUS[wgpu]="FAILED ($?)"
step "image benchmark f16 on wgpu"
run 90 "$BIN/gpu" image wgpu f16 "$IMAGES"

step "summary"
{
    echo "| check | result |"
    echo "|---|---|"
    echo "| device | $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader) |"
    echo "| parity suite, CUDA | ${STATUS[cuda]:-not run} |"
    echo "| parity suite, wgpu (Vulkan) | ${STATUS[wgpu]:-not run} |"
    grep -h '^RESULT ' "$LOG" | sed 's/^RESULT \([^:]*\): \(.*\)/| \1 | \2 |/'
} | tee "$LOGDIR/summary.md"
