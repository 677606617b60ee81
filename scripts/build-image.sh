#!/usr/bin/env bash
# Builds the service image from a binary built here, for machines that cannot pull
# the rust image: the Dockerfile's runtime stage (FROM scratch) over a context
# holding the static binary and, with --model, a model baked in at /model.
#
#   scripts/build-image.sh [--tag slimformer:latest] [--model DIR] [--binary FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=slimformer:latest model= binary=
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/model"
if [ -n "$binary" ]; then
  cp "$binary" "$context/rootfs/slimformer"
else
  scripts/build-static.sh "$context/rootfs/slimformer"
fi
if [ -n "$model" ]; then
  [ -f "$model/config.json" ] || { echo "build-image: $model has no config.json" >&2; exit 2; }
  cp -r "$model"/. "$context/rootfs/model/"
fi
# The runtime stage as the Dockerfile writes it, copying from the context instead
# of the build stage.
sed -n '/^FROM scratch AS runtime/,$p' Dockerfile \
  | sed 's|^COPY --from=build /rootfs/ /$|COPY rootfs/ /|' > "$context/Dockerfile"
grep -q '^COPY rootfs/ /$' "$context/Dockerfile" \
  || { echo "build-image: the Dockerfile's runtime stage no longer copies /rootfs/" >&2; exit 1; }
docker build -q -t "$tag" "$context" >/dev/null
echo "build-image: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
