#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read outside bytes (fuzz/: cargo fuzz, libFuzzer):
# tagged data (CoNLL, CoNLL-U, JSON Lines), labelled data (CSV, TSV, JSON Lines), tokenization
# of arbitrary UTF-8 and decoding of arbitrary ids, a model folder's config.json and safetensors
# file, retrain.toml and study.toml.
#
#   scripts/fuzz_smoke.sh [SECONDS] [TARGET...]   (default 5 seconds each, every target)
#
# Starts from the committed seed inputs (fuzz/corpus/TARGET), writes what it discovers to a
# scratch folder (or CORPUS_OUT/TARGET), and fails on the first crash, whose input libFuzzer
# leaves in fuzz/artifacts/TARGET/ (add it to fuzz/corpus/TARGET as a regression input once
# fixed). Installs cargo-fuzz (and a C++ compiler for libFuzzer) when missing; builds on stable
# Rust with RUSTC_BOOTSTRAP=1, as cargo fuzz needs nightly flags.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(tagged_data labelled_data tokenize checkpoint weights_formats toml_configs request_bodies)
export RUSTC_BOOTSTRAP=1
# CORPUS_OUT is taken from where the script was called, not from fuzz/.
[ -z "${CORPUS_OUT:-}" ] || { mkdir -p "$CORPUS_OUT" && CORPUS_OUT=$(cd "$CORPUS_OUT" && pwd); }
if ! command -v c++ >/dev/null; then
  echo "fuzz_smoke: installing g++ (libFuzzer is C++)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++ >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++ >/dev/null; }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz_smoke: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
cd fuzz
cargo fuzz build -O >/dev/null 2>&1 || cargo fuzz build -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  out=${CORPUS_OUT:-$scratch}/$target
  mkdir -p "$out"
  log=$scratch/$target.log
  if ! cargo fuzz run -O "$target" "$out" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=4096 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz_smoke: $target crashed (input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  echo "fuzz_smoke: $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -n1), no crash"
done
