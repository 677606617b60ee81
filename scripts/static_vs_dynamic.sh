#!/usr/bin/env bash
# The static binary (scripts/build-static.sh) against the ordinary dynamic release
# build, taking turns: the forward pass (`bench`) and a whole `embed` job over a
# file, ROUNDS rounds each. Prints each side's median and the ratio static/dynamic.
#
#   scripts/static_vs_dynamic.sh [ROUNDS] [INPUT]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
input=${2:-assets/data/rotten_tomatoes/test.csv}
model=assets/all-MiniLM-L6-v2
static=target/static-bench/slimformer
cargo build --release -q -p slimformer-cli
scripts/build-static.sh "$static" >/dev/null
dynamic=target/release/slimformer
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq "$rounds"); do
  for side in static dynamic; do
    exe=${!side}
    "$exe" bench "$model" --shapes 1x16,32x128 --runs 20 --json >"$out/bench-$side-$r.json"
    start=$(date +%s.%N)
    "$exe" embed "$model" --input "$input" --output "$out/embed-$side.npy"
    awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}' >>"$out/embed-$side.txt"
  done
done
median() { sort -g | awk '{v[NR] = $1} END {printf "%.3f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
for shape in 1x16 32x128; do
  for side in static dynamic; do
    cat "$out"/bench-$side-*.json | jq -r --arg s "$shape" '.[] | select(.shape == $s) | .median_ms' | median >"$out/m-$side"
  done
  echo "forward $shape: static $(cat "$out/m-static") ms, dynamic $(cat "$out/m-dynamic") ms, ratio $(awk -v a="$(cat "$out/m-static")" -v b="$(cat "$out/m-dynamic")" 'BEGIN {printf "%.3f", a / b}')"
done
s=$(median <"$out/embed-static.txt") d=$(median <"$out/embed-dynamic.txt")
echo "embed $input: static $s s, dynamic $d s, ratio $(awk -v a="$s" -v b="$d" 'BEGIN {printf "%.3f", a / b}')"
echo "(medians of $rounds alternating rounds; $(nproc) cores; each bench median over 20 runs)"
