#!/usr/bin/env bash
# Builds, here (no GPU or CUDA toolkit needed), everything scripts/gpu-check.sh runs on a GPU
# host that has no Rust toolchain and no internet:
# - the parity test binary and the GPU benchmark with the `cuda` and `wgpu` features, in
#   release, stripped into .gpu/bins.tar.gz (about 30 MB: the device tool carries 64 MiB with
#   the repository); libella.so with every backend is built too (target/release), and all of
#   it linted as it compiles (clippy-driver as the workspace's rustc wrapper, warnings
#   denied: CI does not build the `cuda` lines);
# - the Vulkan loader (Debian's libvulkan1) in .gl/, for hosts whose driver ships the NVIDIA
#   Vulkan ICD but no loader;
# - diffusers' wheels in .whl/, for hosts with PyTorch but without diffusers.
# .gpu, .gl and .whl are git-ignored: name them in the device tool's `carry`.
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
RUSTC_WORKSPACE_WRAPPER=clippy-driver CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__ \
    cargo build --release --workspace --features ella-ffi/cuda,ella-ffi/wgpu --lib --test parity --bench gpu \
    --message-format=json-diagnostic-rendered-ansi \
    | tee .gpu/build.json | executables | while read -r exe; do
    name=$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')
    strip -o ".gpu/bin/$name" "$exe"
done
test -x .gpu/bin/parity && test -x .gpu/bin/gpu
tar -C .gpu -czf .gpu/bins.tar.gz bin
rm -rf .gpu/bin .gpu/build.json

if [ ! -d .gl ]; then
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    apt-get $o update -qq
    (cd .gl && apt-get $o download libvulkan1)
fi
if [ ! -d .whl ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
fi
ls -l .gpu .gl .whl
