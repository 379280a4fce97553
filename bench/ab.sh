#!/usr/bin/env bash
# A/B two builds of rack-registry on one read URL, side by side, interleaved.
#
# Usage: bench/ab.sh OLD_BINARY NEW_BINARY [path] [header]
#   e.g. git stash; cargo build --release; cp target/release/rack-registry /tmp/old
#        git stash pop; cargo build --release
#        bench/ab.sh /tmp/old target/release/rack-registry /registries/@rack/build/rollup/1.0.0
# Knobs (environment): AB_ROUNDS=8 (wrk runs per binary), AB_DURATION=3 (seconds per run),
#   AB_PIN=0 (1: both servers on CPU 0 with one HTTP worker, wrk on CPU 1), RACK_FIXTURES,
#   AB_STORAGE (serve this storage root, read-only, instead of a copy of the fixtures; its
#   namespaces must be declared in AB_NAMESPACES, e.g. '"@rand": []'),
#   AB_SCRIPT (a wrk Lua script, e.g. random paths over many files; then the path only checks
#   that both answer alike), AB_SERVER_ENV (more NAME=value words for both servers'
#   environment, e.g. MAX_CONNECTIONS=1024).
#
# Both servers run at once on a copy of the fixtures; wrk alternates between them (A, B, A, B...)
# so that drifts of a shared, noisy machine hit both alike. Prints the median requests/s of each
# and the ratio B/A, plus every run. Used for the per-change gains in docs/PERFORMANCE.md.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY [path] [header]" >&2; exit 2; }
A="$(realpath "$1")"; B="$(realpath "$2")"
URL_PATH="${3:-/registries/@rack/build/rollup/1.0.0}"
HEADER="${4:-X-Bench: 1}"
ROUNDS="${AB_ROUNDS:-8}"; DURATION="${AB_DURATION:-3}"; PIN="${AB_PIN:-0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/bench/lib.sh"
command -v wrk >/dev/null || die "wrk is needed (apt-get install -y wrk)"
fixtures

W="$(mktemp -d /tmp/rack-ab.XXXXXX)"
PIDS=()
trap 'cleanup_pids; rm -rf "$W"' EXIT
if [ -n "${AB_STORAGE:-}" ]; then
  STORAGE="$(realpath "$AB_STORAGE")"
else
  STORAGE="$W/storage"
  cp -r "$RACK_FIXTURES" "$STORAGE"
  chmod -R u+w "$STORAGE"
fi
printf '{%s}\n' "${AB_NAMESPACES:-\"@rack\": []}" >"$W/auth.json"
SCRIPT=(); [ -n "${AB_SCRIPT:-}" ] && SCRIPT=(-s "$(realpath "$AB_SCRIPT")")

if [ "$PIN" = 1 ]; then SRV=(taskset -c 0); WRK=(taskset -c 1); EXTRA=(HTTP_WORKERS=1); else SRV=(); WRK=(); EXTRA=(); fi
start() { # binary port
  env -i PATH="$PATH" HOST=127.0.0.1 PORT="$2" STORAGE_ROOT="$STORAGE" AUTH_CONFIG_PATH="$W/auth.json" \
    LOG_FORMAT=json RATE_LIMIT_MAX=1000000000 ${AB_SERVER_ENV:-} "${EXTRA[@]}" "${SRV[@]}" "$1" serve >"$W/$2.log" 2>&1 &
  PIDS+=($!)
}
start "$A" 18180
start "$B" 18190
for port in 18180 18190; do wait_http "http://127.0.0.1:$port/health"; done
# Both must answer the same status and bytes.
sa="$(curl -s -H "$HEADER" -w '%{http_code}' "http://127.0.0.1:18180$URL_PATH" | sha256sum)"
sb="$(curl -s -H "$HEADER" -w '%{http_code}' "http://127.0.0.1:18190$URL_PATH" | sha256sum)"
[ "$sa" = "$sb" ] || echo "WARNING: the two binaries answer differently" >&2

runs="$W/runs.txt"
: >"$runs"
for _ in $(seq 1 "$ROUNDS"); do
  for side in a b; do
    port=18180; [ "$side" = b ] && port=18190
    rps="$("${WRK[@]}" wrk -t2 -c32 -d"${DURATION}s" "${SCRIPT[@]}" -H "$HEADER" "http://127.0.0.1:$port$URL_PATH" |
      awk '/^Requests\/sec:/ {print $2}')"
    echo "$side $rps" >>"$runs"
  done
done
ma="$(awk '$1 == "a" {print $2}' "$runs" | median)"
mb="$(awk '$1 == "b" {print $2}' "$runs" | median)"
echo "A (old) median req/s: $ma"
echo "B (new) median req/s: $mb"
echo "B/A: $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.3f", b / a}')"
echo "runs: $(awk '{printf "%s:%d ", $1, $2}' "$runs")"
