#!/usr/bin/env bash
# Run the fuzz targets (nightly + cargo-fuzz; see docs/RELIABILITY.md).
#
#   fuzz/run.sh                   every target, SECONDS_PER_TARGET (600) each, one at a time
#   fuzz/run.sh route headers     those targets only
#   fuzz/run.sh cmin [TARGET...]  merge what runs found into the committed corpora, minimized
#
# Crashes land in fuzz/artifacts/<target>/: keep them (tests/fuzz_replay.rs replays them), fix,
# and add a regression test. Installs nightly and cargo-fuzz (under target/tools) when missing.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd .. && pwd)"
TARGETS=(route auth_json webhooks_json registry_json archive_gz archive_tar multipart headers)
SECONDS_PER_TARGET="${SECONDS_PER_TARGET:-600}"
export PATH="$root/target/tools/bin:$PATH"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --root "$root/target/tools" cargo-fuzz

mode=run
if [ "${1:-}" = cmin ]; then mode=cmin; shift; fi
[ $# -gt 0 ] && TARGETS=("$@")
# Plain libFuzzer coverage, no sanitizer: the code under test is safe Rust (an overflow or a
# panic still aborts), and ASan would halve the executions on this small machine.
FLAGS=(--sanitizer none)
cargo +nightly fuzz build "${FLAGS[@]}"
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  if [ "$mode" = cmin ]; then
    # What runs found joins the committed corpus, which is then cut to the inputs that reach
    # new edges (hit counts ignored: a few hundred files per target instead of thousands).
    cp -n target/corpus/"$t"/* "corpus/$t/" 2>/dev/null || true
    cargo +nightly fuzz cmin "${FLAGS[@]}" "$t" "corpus/$t" -- -use_counters=0
  else
    echo "== $t ($SECONDS_PER_TARGET s)"
    # A scratch corpus dir first: new inputs go there, the committed corpus is read-only input.
    mkdir -p "target/corpus/$t"
    cargo +nightly fuzz run "${FLAGS[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=20 -rss_limit_mb=2048 \
      -print_final_stats=1 2>&1 | tee "target/$t.log" | grep -E '^(#[0-9]+ +(DONE|pulse))|^stat::|SUMMARY|panicked' || true
  fi
done
