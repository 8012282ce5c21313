#!/usr/bin/env bash
# The CPU benchmarks of docs/performance.md, ella against PyTorch in one run: builds the
# benches once (release), runs the criterion benches, then scripts/bench_torch.py on the
# same configs with the same number of threads; then the whole image (benches/image.rs and
# scripts/bench_image.py: full-size files with random weights, load, one 512×512 25-step
# image, peak memory), each case in its own process, ella then PyTorch; and prints a table of
# Rust / PyTorch ratios (lower is better). Run it on an idle machine.
#
#   scripts/bench-cpu.sh [THREADS] [--no-image]    (default: every core; the image ~40 min)
#
# Needs the Python reference stack of scripts/requirements.txt. The full-size files (~14 GB)
# are written once to $ELLA_BENCH_MODELS (default target/bench-cpu/models).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=$(nproc)
IMAGE=yes
for arg in "$@"; do
    case $arg in
        --no-image) IMAGE=no ;;
        *[!0-9]* | 0 | "") echo "usage: $0 [THREADS] [--no-image]" >&2; exit 2 ;;
        *) THREADS=$arg ;;
    esac
done
OUT=target/bench-cpu
# Absolute: cargo runs the bench binaries in the package folder (ella-core/).
MODELS=$(realpath -m "${ELLA_BENCH_MODELS:-$OUT/models}")
BENCHES=(--bench text_encoding --bench sd --bench image)
mkdir -p "$OUT"
rm -f "$OUT"/*.json

cargo bench -p ella-core "${BENCHES[@]}" --no-run
rm -rf target/criterion
# rayon's global pool, which the flex backend and ella's CPU kernels use, reads this.
export RAYON_NUM_THREADS=$THREADS
cargo bench -p ella-core --bench text_encoding --bench sd 2>&1 | tee "$OUT/rust.log"
python3 scripts/bench_torch.py --threads "$THREADS" --sd --json "$OUT/torch.json" | tee "$OUT/torch.log"

if [ "$IMAGE" = yes ]; then
    [ -f "$MODELS/f16/sd/vae/config.json" ] || python3 scripts/bench_image.py write "$MODELS"
    # Loads are timed from the page cache (the files read once before each process), so that
    # they measure parsing and conversion, not the disk.
    for case in "f32 image" "f16 load-only"; do
        set -- $case
        for side in ella torch; do
            cat "$MODELS/$1"/*.safetensors "$MODELS/$1"/*/*.safetensors "$MODELS/$1"/sd/*/*.safetensors >/dev/null
            if [ $side = ella ]; then
                cargo bench -p ella-core --bench image -- "$MODELS/$1" $2 | tee -a "$OUT/rust.log" |
                    sed -n 's/^RESULT //p' >"$OUT/ella-$1.json"
            else
                python3 scripts/bench_image.py run "$MODELS/$1" --threads "$THREADS" \
                    $([ $2 = load-only ] && echo --load-only) --json "$OUT/torch-$1.json" | tee -a "$OUT/torch.log"
            fi
        done
    done
fi

python3 - "$THREADS" "$OUT" <<'EOF'
import json, sys
from pathlib import Path

threads, out = sys.argv[1], Path(sys.argv[2])
torch = json.loads((out / "torch.json").read_text())
rust = {}
for bench in Path("target/criterion").glob("**/new/benchmark.json"):
    name = json.loads(bench.read_text())["full_id"]
    estimates = json.loads((bench.parent / "estimates.json").read_text())
    rust[name] = estimates["median"]["point_estimate"] / 1e9
# The whole-image cases: seconds, and peak resident memory in GiB.
rows = {"image/whole 512x512 25 steps cfg": ("f32", "image"), "image/load f32 files": ("f32", "load"),
        "image/load f16 files": ("f16", "load"), "image/peak resident memory (GiB)": ("f32", "peak_rss_kib")}
for name, (case, key) in rows.items():
    for side, results in [("ella", rust), ("torch", torch)]:
        f = out / f"{side}-{case}.json"
        if f.exists():
            value = json.loads(f.read_text())[key]
            results[name] = value / 2**20 if key == "peak_rss_kib" else value
print(f"\n{threads} threads each; median seconds (criterion) or one run (image/); ratio = ella / PyTorch\n")
print("| benchmark | ella | PyTorch | ratio |")
print("|---|---|---|---|")
for name in sorted(set(rust) | set(torch)):
    r, t = rust.get(name), torch.get(name)
    gib = "GiB" in name
    cell = lambda s: "—" if s is None else (f"{s:.2f}" if gib else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s")
    ratio = f"{r / t:.2f}" if r and t else "—"
    print(f"| {name} | {cell(r)} | {cell(t)} | {ratio} |")
EOF
