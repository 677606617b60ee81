#!/usr/bin/env bash
# Builds `slimformer` as one static executable (glibc linked in with crt-static;
# libstdc++ is not used) and writes it, stripped, to OUT. Used by the Dockerfile's
# build stage and by scripts/build-image.sh.
#
#   scripts/build-static.sh OUT
set -euo pipefail
out=${1:?usage: scripts/build-static.sh OUT}
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the flag off build scripts and proc-macros, which must stay dynamic.
# The output is stripped, so the build carries no debug info (a third of the disk).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=0 \
  cargo build --release --locked -p slimformer-cli --target "$target" --target-dir target/static
built=target/static/$target/release/slimformer
# No NEEDED entry and no program interpreter: nothing is loaded from the host.
if readelf -d "$built" | grep -q NEEDED || readelf -l "$built" | grep -q INTERP; then
  echo "build-static: $built still needs shared libraries:" >&2
  readelf -d "$built" | grep NEEDED >&2 || true
  exit 1
fi
mkdir -p "$(dirname "$out")"
strip -o "$out.tmp" "$built"
mv "$out.tmp" "$out"
echo "build-static: $out ($(du -h "$out" | cut -f1), static)"
