#!/usr/bin/env bash
# Builds, here (no GPU or CUDA toolkit needed), what scripts/gpu-check.sh runs on a GPU
# host that has no Rust toolchain: the parity test binary and the GPU benchmark, with the
# `cuda` feature, stripped and packed into .gpu/bins.tar.gz (git-ignored; carry it there).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])'
}

rm -rf .gpu && mkdir -p .gpu/bin
cargo build --release -p ella-core --features cuda --test parity --bench gpu --message-format=json \
    | executables | while read -r exe; do
    name=$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')
    strip -o ".gpu/bin/$name" "$exe"
done
tar -C .gpu -czf .gpu/bins.tar.gz bin
rm -rf .gpu/bin
ls -l .gpu
