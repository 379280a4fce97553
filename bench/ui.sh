#!/usr/bin/env bash
# Web page speed (SPEC §15, issue 16), in one run of our server:
#   1. a registry page served warm, against the API's manifest of the same registry: the page
#      must reach >= 50 % of the API's throughput (both through the hot cache);
#   2. the home page and the namespace page of a 10,000-registry namespace: p50 < 50 ms, for one
#      viewer alone (-c1, the time a person waits) and under the same load as row 1.
#
# Usage: bench/ui.sh
# Knobs (environment):
#   UI_DURATION=5      seconds per wrk run
#   UI_ROUNDS=3        interleaved runs per row (medians are reported)
#   UI_CONNECTIONS=32  wrk connections (2 threads) for the throughput rows
#   UI_REGISTRIES=10000  registries in the big namespace
#   UI_BIN             a rack-registry binary to measure (default: build --release)
#
# Prints a Markdown table and the verdict of each target; exits 1 if one is missed. Every row
# checks first that the URL answers 200. Numbers go to docs/PERFORMANCE.md "Web pages".
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/bench/lib.sh"
DURATION="${UI_DURATION:-5}"
ROUNDS="${UI_ROUNDS:-3}"
CONNS="${UI_CONNECTIONS:-32}"
NREG="${UI_REGISTRIES:-10000}"
PORT=18093

need_tools
if [ -n "${UI_BIN:-}" ]; then
  BIN="$UI_BIN"
else
  say "== building the release binary"
  (cd "$ROOT" && cargo build --release -p rack-registry -q)
  BIN="$ROOT/target/release/rack-registry"
fi
fixtures
FIX="$RACK_FIXTURES"

W="$(mktemp -d /tmp/rack-ui-bench.XXXXXX)"
PIDS=()
trap 'cleanup_pids; rm -rf "$W"' EXIT
S="$W/storage"
mkdir -p "$S"
cp -r "$FIX"/. "$S"/
chmod -R u+w "$S"

say "== generating @big ($NREG registries, each with a manifest)"
python3 - "$S" "$NREG" <<'PY'
import json, os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    name = f"reg-{i:05d}"
    d = os.path.join(root, "@big", name)
    os.makedirs(os.path.join(d, "1.0.0"), exist_ok=True)
    with open(os.path.join(d, "versions.json"), "w") as f:
        f.write('{\n  "versions": [\n    "1.0.0"\n  ]\n}\n')
    with open(os.path.join(d, "1.0.0", "registry.json"), "w") as f:
        json.dump({
            "name": name, "namespace": "@big", "version": "1.0.0", "type": "registry:lib",
            "priority": 0, "description": f"Generated registry number {i}",
            "tags": ["generated", f"group-{i % 10}"],
            "files": [{"target": f"src/{name}.ts", "type": "registry:lib",
                       "content": "export const x = 1;\n"}],
        }, f)
PY
printf '{"@rack": [], "@big": []}\n' >"$W/auth.json"

env -i PATH="$PATH" HOST=127.0.0.1 PORT="$PORT" STORAGE_ROOT="$S" AUTH_CONFIG_PATH="$W/auth.json" \
  LOG_FORMAT=json RATE_LIMIT_MAX=0 "$BIN" serve >"$W/us.log" 2>&1 &
PIDS+=($!)
US="http://127.0.0.1:$PORT"
wait_http "$US/health"

API="/registries/@rack/quality/lint-staged/1.0.0"
PAGE="/ui/@rack/quality/lint-staged/1.0.0"
HOME_="/ui"
NS="/ui/@big"
NS_LAST="/ui/@big?page=$(((NREG + 49) / 50))"
for p in "$API" "$PAGE" "$HOME_" "$NS" "$NS_LAST"; do
  code="$(curl -s -o /dev/null -w '%{http_code}' "$US$p")"
  [ "$code" = 200 ] || die "$p answered $code"
done
curl -fs "$US$NS" | grep -q 'reg-00049' || die "$NS does not list its first page"
curl -fs "$US$HOME_" | grep -q "<td>$NREG</td>" || die "$HOME_ does not count @big's $NREG registries"

TABLE="$W/table.md"
{
  echo "| row | connections | req/s | p50 ms | p99 ms |"
  echo "|---|--:|--:|--:|--:|"
} >"$TABLE"
declare -A RESULT

# row name conns path...: the paths run in turn, round by round, so that noise hits them alike.
rows() {
  local conns="$1"; shift
  local -A runs=()
  local i p args=(-t"$((conns < 2 ? 1 : 2))" -c"$conns" -d"${DURATION}s" --latency)
  for p in "$@"; do curl -fs -o /dev/null "$US$p"; done # warm
  for ((i = 1; i <= ROUNDS; i++)); do
    for p in "$@"; do
      say "-- $p, -c$conns: round $i/$ROUNDS"
      runs[$p]+="$(wrk_once "$US$p" "${args[@]}")"$'\n'
    done
  done
  for p in "$@"; do
    local m
    # shellcheck disable=SC2086
    m="$(medians ${runs[$p]})"
    RESULT["$p|$conns"]="$m"
    awk -F'|' -v name="$p" -v c="$conns" -v m="$m" 'BEGIN {
      split(m, a, "|");
      if (a[4] > 0) printf "WARNING: %s: %d non-2xx answers\n", name, a[4] > "/dev/stderr";
      printf "| `%s` | %d | %.0f | %s | %s |\n", name, c, a[1], a[2], a[3] }' >>"$TABLE"
  done
}

rows "$CONNS" "$API" "$PAGE" "$HOME_" "$NS" "$NS_LAST"
rows 1 "$HOME_" "$NS" "$NS_LAST"

field() { cut -d'|' -f"$2" <<<"${RESULT[$1]}"; }
VERDICT="$W/verdict"
: >"$VERDICT"
check() { # description ok(0/1)
  if [ "$2" = 1 ]; then echo "- PASS: $1" >>"$VERDICT"; else echo "- MISS: $1" >>"$VERDICT"; fi
}
ratio="$(awk -v a="$(field "$PAGE|$CONNS" 1)" -v b="$(field "$API|$CONNS" 1)" 'BEGIN { printf "%.2f", a / b }')"
check "registry page at $ratio x the API manifest's throughput (target >= 0.50)" \
  "$(awk -v r="$ratio" 'BEGIN { print (r >= 0.5) ? 1 : 0 }')"
for p in "$HOME_" "$NS" "$NS_LAST"; do
  for c in 1 "$CONNS"; do
    p50="$(field "$p|$c" 2)"
    check "\`$p\` p50 $p50 ms at -c$c (target < 50)" "$(awk -v v="$p50" 'BEGIN { print (v < 50) ? 1 : 0 }')"
  done
done

echo
echo "Web pages benchmark, $(date -u +%Y-%m-%d), $(nproc) CPUs, wrk -t2, ${ROUNDS}x${DURATION}s interleaved, medians;"
echo "@big holds $NREG registries (50 a page); the registry page and API row are @rack/quality/lint-staged 1.0.0"
echo
cat "$TABLE"
echo
cat "$VERDICT"
echo
echo "our RSS after the runs: $(rss_kib "${PIDS[0]}") KiB"
! grep -q MISS "$VERDICT"
