#!/usr/bin/env bash
# Resident memory (VmRSS) of the release server after startup, after reads and after uploads.
#
# Usage: bench/rss.sh            (from anywhere; needs curl)
# Knobs (environment):
#   RSS_READS=1000     reads (curl, one connection each) of a manifest, a template file, the
#                      version list, the namespace listing and a schema, in turn
#   RSS_UPLOADS=50     uploads of examples/hello, each a new version, with `rack-registry publish`
#   RSS_PORT=18090     port of the server (127.0.0.1)
#   RSS_BUILD=1        0: use target/release/rack-registry as it is (no `cargo build --release`)
#   RSS_BIN=...        measure this binary instead (another build, for a before/after); no build
#   RSS_KEEP=0         1: keep the work directory (storage, log) for inspection
#
# Prints one line per phase: VmRSS and VmHWM (peak) of the server, from /proc/<pid>/status.
# See docs/PERFORMANCE.md "Memory after reads and uploads".
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
READS="${RSS_READS:-1000}"
UPLOADS="${RSS_UPLOADS:-50}"
PORT="${RSS_PORT:-18090}"
BUILD="${RSS_BUILD:-1}"
KEEP="${RSS_KEEP:-0}"
TOKEN="rss-bench-admin-token"
URL="http://127.0.0.1:$PORT"

. "$ROOT/bench/lib.sh"
command -v curl >/dev/null || die "curl is missing (apt-get install -y curl)"

BIN="${RSS_BIN:-$ROOT/target/release/rack-registry}"
if [ "$BUILD" = 1 ] && [ -z "${RSS_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p rack-registry) || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "$BIN not found (run cargo build --release)"

W="$(mktemp -d)"
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  if [ "$KEEP" = 1 ]; then say "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

echo '{"@demo": []}' >"$W/auth.json"
env -i PATH="$PATH" HOST=127.0.0.1 PORT="$PORT" STORAGE_ROOT="$W/data" \
  AUTH_CONFIG_PATH="$W/auth.json" WEBHOOK_CONFIG_PATH="$W/none.json" ADMIN_TOKEN="$TOKEN" \
  AUDIT_LOG_PATH="$W/audit.log" RATE_LIMIT_MAX=0 "$BIN" >"$W/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
  curl -fsS -o /dev/null "$URL/health" 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || die "server exited: $(tail -5 "$W/server.log")"
  sleep 0.1
done
curl -fsS -o /dev/null "$URL/health" || die "server did not answer on $URL"

report() { # phase
  awk -v phase="$1" '/^VmRSS:/ {rss=$2} /^VmHWM:/ {hwm=$2}
    END {printf "%-34s VmRSS %6.1f MiB   VmHWM %6.1f MiB\n", phase, rss/1024, hwm/1024}' \
    "/proc/$PID/status"
}

# One version to read before the reads phase (its upload is the first schema validation).
publish() { # version
  local d="$W/pkg-$1"
  mkdir -p "$d"
  cp -a "$ROOT/examples/hello/." "$d/"
  sed -i "s/\"version\": \"1.0.0\"/\"version\": \"$1\"/" "$d/registry.json"
  RACK_REGISTRY_TOKEN="$TOKEN" "$BIN" publish "$d" --url "$URL" >"$W/publish.log" 2>&1 || die "publish $1 failed: $(cat "$W/publish.log")"
  rm -rf "$d"
}

report "after startup"

# Reads first, on a registry put in place without the upload path (plain files), so that this
# phase measures the read path alone.
mkdir -p "$W/data/@demo/features/hello/1.0.0/templates"
cp "$ROOT/examples/hello/registry.json" "$W/data/@demo/features/hello/1.0.0/"
cp "$ROOT/examples/hello/templates/"* "$W/data/@demo/features/hello/1.0.0/templates/"
printf '{"versions": ["1.0.0"]}\n' >"$W/data/@demo/features/hello/versions.json"
paths=(
  /registries/@demo/features/hello/1.0.0
  /registries/@demo/features/hello/1.0.0/files/templates/README.md
  /registries/@demo/features/hello/versions
  /namespaces
  /schemas/registry-item.json
)
for i in $(seq "$READS"); do
  curl -s -o /dev/null -H 'Accept-Encoding: gzip' "$URL${paths[$((i % ${#paths[@]}))]}"
done
report "after $READS reads"

for i in $(seq "$UPLOADS"); do publish "1.1.$i"; done
report "after $UPLOADS uploads"

for i in $(seq "$READS"); do
  curl -s -o /dev/null -H 'Accept-Encoding: gzip' "$URL${paths[$((i % ${#paths[@]}))]}"
done
report "after $READS more reads"
