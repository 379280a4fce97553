#!/usr/bin/env bash
# Warm reads on the s3 backend against the local backend, one binary, side by side, interleaved.
#
# Usage: bench/s3.sh [BINARY] [path]
#   e.g. cargo build --release && bench/s3.sh target/release/rack-registry
# Knobs (environment): S3B_ROUNDS=6 (wrk runs per backend), S3B_DURATION=3 (seconds per run),
#   RACK_FIXTURES, RACK_S3_ENDPOINT (else tools/moto/start starts moto, stopped at the end).
#
# Both servers serve a copy of the fixtures: one from STORAGE_ROOT, one from a fresh moto bucket
# seeded by `storage push` (STORAGE_REVALIDATE_MS at its default, 1000). wrk alternates between
# them. Prints the median requests/s of each and the ratio s3/local (target >= 0.8: a warm read
# must not call the bucket).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/bench/lib.sh"
BIN="$(realpath "${1:-$ROOT/target/release/rack-registry}")"
URL_PATH="${2:-/registries/@rack/build/rollup/1.0.0}"
ROUNDS="${S3B_ROUNDS:-6}"; DURATION="${S3B_DURATION:-3}"
command -v wrk >/dev/null || die "wrk is needed (apt-get install -y wrk)"
fixtures

W="$(mktemp -d /tmp/rack-s3b.XXXXXX)"
PIDS=()
trap 'cleanup_pids; rm -rf "$W"' EXIT
if [ -z "${RACK_S3_ENDPOINT:-}" ]; then
  RACK_S3_ENDPOINT="$("$ROOT/tools/moto/start")"
  PIDS+=("$(cat "$ROOT/target/moto-venv/server.${RACK_S3_ENDPOINT##*:}.pid")")
fi
BUCKET="rack-bench-$$"
curl -fs -X PUT "$RACK_S3_ENDPOINT/$BUCKET" >/dev/null
cp -r "$RACK_FIXTURES" "$W/storage"
chmod -R u+w "$W/storage"
printf '{"@rack": []}\n' >"$W/auth.json"
S3ENV=(STORAGE_BACKEND=s3 S3_ENDPOINT="$RACK_S3_ENDPOINT" S3_BUCKET="$BUCKET" S3_ACCESS_KEY_ID=bench S3_SECRET_ACCESS_KEY=bench)
env -i PATH="$PATH" "${S3ENV[@]}" "$BIN" storage push "$W/storage" >/dev/null

start() { # port extra-env...
  local port="$1"; shift
  env -i PATH="$PATH" HOST=127.0.0.1 PORT="$port" AUTH_CONFIG_PATH="$W/auth.json" LOG_FORMAT=json \
    RATE_LIMIT_MAX=1000000000 "$@" "$BIN" serve >"$W/$port.log" 2>&1 &
  PIDS+=($!)
}
start 18280 STORAGE_ROOT="$W/storage"
start 18290 STORAGE_ROOT="$W/scratch" "${S3ENV[@]}"
for port in 18280 18290; do wait_http "http://127.0.0.1:$port/health"; done
sa="$(curl -s -w '%{http_code}' "http://127.0.0.1:18280$URL_PATH" | sha256sum)"
sb="$(curl -s -w '%{http_code}' "http://127.0.0.1:18290$URL_PATH" | sha256sum)"
[ "$sa" = "$sb" ] || echo "WARNING: local and s3 answer differently" >&2

runs="$W/runs.txt"
: >"$runs"
for _ in $(seq 1 "$ROUNDS"); do
  for side in local s3; do
    port=18280; [ "$side" = s3 ] && port=18290
    rps="$(wrk -t2 -c32 -d"${DURATION}s" "http://127.0.0.1:$port$URL_PATH" | awk '/^Requests\/sec:/ {print $2}')"
    echo "$side $rps" >>"$runs"
  done
done
ml="$(awk '$1 == "local" {print $2}' "$runs" | median)"
ms="$(awk '$1 == "s3" {print $2}' "$runs" | median)"
echo "local median req/s: $ml"
echo "s3    median req/s: $ms"
echo "s3/local: $(awk -v a="$ml" -v b="$ms" 'BEGIN {printf "%.3f", b / a}')"
echo "runs: $(awk '{printf "%s:%d ", $1, $2}' "$runs")"
