#!/usr/bin/env bash
# Edge Worker size and speed (docs/PERFORMANCE.md, "Edge Worker"):
# - the gzipped bundle (build/index.js + build/index_bg.wasm; Cloudflare's limits: 3 MiB free,
#   our budget 1 MiB);
# - CPU time per request for a manifest and a namespace listing under miniflare, for a cold
#   isolate (the first request of a fresh workerd) and warm (the mean over many requests).
#
# Usage: bench/worker.sh   (after building the Worker and `npm ci`, see docs/worker.md)
# Knobs: WB_COLD=5 (fresh runtimes measured), WB_WARM=400 (warm requests per route), RACK_FIXTURES.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/bench/lib.sh"
WK="$ROOT/crates/rack-worker"
[ -f "$WK/build/index.js" ] || die "build the Worker first (docs/worker.md)"
[ -d "$WK/node_modules/miniflare" ] || die "run npm ci in $WK"
fixtures

gz() { gzip -9 -c "$1" | wc -c; }
js=$(gz "$WK/build/index.js"); wasm=$(gz "$WK/build/index_bg.wasm")
raw=$(( $(wc -c <"$WK/build/index.js") + $(wc -c <"$WK/build/index_bg.wasm") ))
total=$((js + wasm))
printf 'bundle: %d bytes raw, %d bytes gzipped (js %d + wasm %d) = %.1f KiB gzipped\n' \
  "$raw" "$total" "$js" "$wasm" "$(echo "$total / 1024" | bc -l)"
[ "$total" -lt $((1024 * 1024)) ] || die "gzipped bundle over 1 MiB"

node "$ROOT/bench/worker-cpu.js"
