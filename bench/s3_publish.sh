#!/usr/bin/env bash
# Requests made to the bucket per publish as one registry grows from 1 to 1,000 versions
# (SPEC §11.2: the target is flat). Not a CI test: a thousand publishes take minutes.
#
# Usage: bench/s3_publish.sh
# Knobs (environment): RACK_BENCH_VERSIONS=1000, RACK_FIXTURES, RACK_S3_ENDPOINT (else
#   tools/ministack/start starts ministack, stopped at the end).
#
# Runs the ignored test `bench_requests_per_publish_up_to_1000_versions` of tests/s3_costs.rs:
# one server on a fresh bucket (ministack, the tests' S3 server; the counts do not depend on the
# server) behind the test-only counting S3 front; every publish is a
# one-file package of a new version of `@company/build/growing`. Prints the first publish's
# request count, then min/max/mean requests and mean time per publish for each decade of
# registry sizes (1-9, 10-99, 100-999 versions already stored).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/bench/lib.sh"
cd "$ROOT"
fixtures
PIDS=()
trap cleanup_pids EXIT
if [ -z "${RACK_S3_ENDPOINT:-}" ]; then
  RACK_S3_ENDPOINT="$("$ROOT/tools/ministack/start")"
  PIDS+=("$(cat "$ROOT/target/ministack-venv/server.${RACK_S3_ENDPOINT##*:}.pid")")
fi
export RACK_S3_ENDPOINT
export RACK_BENCH_VERSIONS="${RACK_BENCH_VERSIONS:-1000}"
cargo test -p rack-registry --test s3_costs -- --ignored --nocapture \
  bench_requests_per_publish_up_to_1000_versions
