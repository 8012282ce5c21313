#!/usr/bin/env bash
# The CPU benchmarks of docs/performance.md, ella against PyTorch in one run: builds the
# criterion benches once (release), runs them, then scripts/bench_torch.py on the same
# configs with the same number of threads, one after the other, and prints a table of
# Rust / PyTorch ratios (lower is better). Run it on an idle machine.
#
#   scripts/bench-cpu.sh [THREADS]    (default: every core)
#
# Needs the Python reference stack of scripts/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
OUT=target/bench-cpu
BENCHES=(--bench text_encoding --bench sd)
mkdir -p "$OUT"

cargo bench -p ella-core "${BENCHES[@]}" --no-run
rm -rf target/criterion
# rayon's global pool, which the flex backend and ella's CPU kernels use, reads this.
RAYON_NUM_THREADS=$THREADS cargo bench -p ella-core "${BENCHES[@]}" 2>&1 | tee "$OUT/rust.log"
python3 scripts/bench_torch.py --threads "$THREADS" --sd --json "$OUT/torch.json" | tee "$OUT/torch.log"

python3 - "$THREADS" "$OUT/torch.json" <<'EOF'
import json, sys
from pathlib import Path

threads, torch_file = sys.argv[1], sys.argv[2]
torch = json.loads(Path(torch_file).read_text())
rust = {}
for bench in Path("target/criterion").glob("**/new/benchmark.json"):
    name = json.loads(bench.read_text())["full_id"]
    estimates = json.loads((bench.parent / "estimates.json").read_text())
    rust[name] = estimates["median"]["point_estimate"] / 1e9
print(f"\n{threads} threads each; median seconds; ratio = ella / PyTorch\n")
print("| benchmark | ella | PyTorch | ratio |")
print("|---|---|---|---|")
for name in sorted(set(rust) | set(torch)):
    r, t = rust.get(name), torch.get(name)
    cell = lambda s: "—" if s is None else (f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s")
    ratio = f"{r / t:.2f}" if r and t else "—"
    print(f"| {name} | {cell(r)} | {cell(t)} | {ratio} |")
EOF
