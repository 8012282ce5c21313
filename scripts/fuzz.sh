#!/usr/bin/env bash
# A long fuzz pass over every parser (ella-core/tests/fuzz.rs, ella-ffi/tests/fuzz.rs): the
# same harnesses CI runs with 300 inputs each, here with ITERATIONS (default 20000) and SEED
# (default: a new one each run, printed, so that long passes explore new inputs). A failing
# input is written to target/fuzz/ (`NAME-N.failure`; `NAME.current` holds the input of a
# hang or an abort). Same build as the tests, so no second build of Burn.
#
#   scripts/fuzz.sh [ITERATIONS [SEED]]
set -euo pipefail
cd "$(dirname "$0")/.."
ITERATIONS=${1:-20000}
SEED=${2:-$(date +%s)}
echo "fuzzing with ELLA_FUZZ_ITERATIONS=$ITERATIONS ELLA_FUZZ_SEED=$SEED"
ELLA_FUZZ_ITERATIONS=$ITERATIONS ELLA_FUZZ_SEED=$SEED \
    cargo test --workspace --features ella-ffi/ndarray,ella-ffi/wgpu --test fuzz -- --nocapture 2>&1 |
    grep -E '^fuzz|^test result|panicked|failure|hung'
