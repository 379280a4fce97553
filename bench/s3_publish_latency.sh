#!/usr/bin/env bash
# A 50-file publish to a bucket over a link that adds 30 ms to every request (SPEC §11.2 step 4:
# template files written PUBLISH_PARALLEL_WRITES at a time under the lease), against one file at a
# time, side by side in one run: median publish time and bucket requests per publish.
#
# Usage: bench/s3_publish_latency.sh
# Knobs (environment): RACK_BENCH_LATENCY_MS=30, RACK_BENCH_FILES=50, RACK_FIXTURES,
#   RACK_S3_ENDPOINT (else the test harness starts its own S3 server, see tests/common/s3.rs).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/bench/lib.sh"
cd "$ROOT"
fixtures
cargo test -p rack-registry --test s3_publish_latency -- --ignored --nocapture bench_publish_over_a_slow_link
