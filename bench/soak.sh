#!/usr/bin/env bash
# Soak (issue 15): mixed load at saturation for SOAK_SECONDS, sampling the server's RSS and open
# file descriptors, counting every status code.
#
# Usage: bench/soak.sh                         (needs wrk, curl, python3)
# Knobs (environment):
#   SOAK_SECONDS=1200       length of the load (RSS levels off after ~9 minutes: see SOAK_WARMUP)
#   SOAK_WARMUP=            seconds of the load before the RSS reference window [default: half
#                           of SOAK_SECONDS]: RSS levels off after ~9 minutes (4-6 with
#                           MIMALLOC_PURGE_DELAY=0; see docs/RELIABILITY.md "Soak")
#   SOAK_WINDOW=60          RSS is compared as means over windows of this many seconds (the one
#                           starting at SOAK_WARMUP, the last one), not single samples
#   SOAK_SAMPLE_SECONDS=5   sampling period of RSS and fds
#   SOAK_CONNECTIONS=64     wrk connections (2 threads) reading as fast as the server answers
#   SOAK_UPLOADERS=2        upload loops (curl, one upload at a time each)
#   SOAK_VERSIONS_PER_REGISTRY=0  0: each loop publishes into one registry (soak-<n>) for the
#                           whole run; N: it moves to a new registry (soak-<n>-<k>) every N
#                           uploads, so no registry outgrows N versions (each publish rebuilds
#                           versions.json from the registry's directory: O(versions) work)
#   SOAK_IDLE=200           idle connections held open (reopened when the server closes them)
#   SOAK_SLOW=50            slowloris connections (one byte every 0.5 s); SLOW/5 slow readers
#   SOAK_PORT=18095         port of the server (127.0.0.1)
#   SOAK_BIN=...            the server binary [default: target/release/rack-registry, built if missing]
#   SOAK_CACHE_MAX_BYTES=8388608  CACHE_MAX_BYTES of the server (8 MiB, so the hot cache and its
#                           large-object tier are full before the warm-up ends; empty: the
#                           server's default, 64 MiB, whose RSS plateau came after ~450 s)
#   SOAK_SERVER_ENV=        more NAME=value words for the server's environment (e.g. MIMALLOC_*)
#   SOAK_KEEP=0             1: keep the work directory (samples, logs)
#
# The load: wrk over every kind of read (manifests, latest, version lists, template files,
# presets, schemas, namespace listings, health), a quarter of them conditional with the
# current ETag (304) and a third with Accept-Encoding; requests that must fail (bad paths, bad
# preset names, unknown routes and schemas, missing versions, wrong methods, undeclared and
# token-protected namespaces: 4xx asked for); uploads of new versions, with every fifth a wrong
# checksum (400) and every seventh a version that exists (409); idle, slowloris and slow-reading
# connections (bench/soak_conns.py). The rate limit is off (one client address).
#
# Pass: no 5xx anywhere (the load asks for none), the server alive, RSS at the end within 10 %
# of RSS after warm-up (means over SOAK_WINDOW), and open fds once the load has stopped not above
# their count before it.
# See docs/RELIABILITY.md "Soak".
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/bench/lib.sh"
SECS="${SOAK_SECONDS:-1200}"
WARMUP="${SOAK_WARMUP:-$((SECS / 2))}"
WINDOW="${SOAK_WINDOW:-60}"
PERIOD="${SOAK_SAMPLE_SECONDS:-5}"
CONNS="${SOAK_CONNECTIONS:-64}"
UPLOADERS="${SOAK_UPLOADERS:-2}"
PER_REG="${SOAK_VERSIONS_PER_REGISTRY:-0}"
IDLE="${SOAK_IDLE:-200}"
SLOW="${SOAK_SLOW:-50}"
PORT="${SOAK_PORT:-18095}"
KEEP="${SOAK_KEEP:-0}"
CACHE="${SOAK_CACHE_MAX_BYTES-8388608}"
TOKEN="soak-admin-token-0123456789"
URL="http://127.0.0.1:$PORT"
[ "$WARMUP" -lt "$SECS" ] || die "SOAK_WARMUP ($WARMUP) must be below SOAK_SECONDS ($SECS)"
command -v wrk >/dev/null || die "wrk is missing (apt-get install -y wrk)"
command -v curl >/dev/null || die "curl is missing (apt-get install -y curl)"
command -v python3 >/dev/null || die "python3 is missing"

BIN="${SOAK_BIN:-$ROOT/target/release/rack-registry}"
if [ -z "${SOAK_BIN:-}" ] && [ ! -x "$BIN" ]; then
  (cd "$ROOT" && cargo build --release -q -p rack-registry) || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "$BIN not found"
fixtures
FIXTURES="$RACK_FIXTURES"

W="$(mktemp -d)"
PIDS=()
PID=""
cleanup() {
  cleanup_pids
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  if [ "$KEEP" = 1 ]; then say "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

# The world: fixtures plus the conformance overlay, its auth.json (anonymous @rack, tokens for
# @company), no webhooks.
cp -r "$FIXTURES" "$W/storage" && cp -r "$ROOT/conformance/world/storage/." "$W/storage/"
chmod -R u+w "$W/storage"
cp "$ROOT/conformance/world/auth.json" "$W/auth.json"
env -i PATH="$PATH" ${CACHE:+CACHE_MAX_BYTES="$CACHE"} ${SOAK_SERVER_ENV:-} HOST=127.0.0.1 PORT="$PORT" STORAGE_ROOT="$W/storage" \
  AUTH_CONFIG_PATH="$W/auth.json" WEBHOOK_CONFIG_PATH="$W/none.json" ADMIN_TOKEN="$TOKEN" \
  RATE_LIMIT_MAX=0 LOG_LEVEL=warn "$BIN" >"$W/server.log" 2>&1 &
PID=$!
wait_http "$URL/health"

# Every read URL of the anonymous namespace, found in the storage tree.
{
  echo /health; echo /namespaces; echo /namespaces/@rack/registries
  for s in registry-item preset rack; do echo "/schemas/$s.json"; done
  for p in "$W"/storage/presets/*/preset.json; do echo "/presets/$(basename "$(dirname "$p")")"; done
  (cd "$W/storage" && find @rack -name versions.json) | while read -r v; do
    reg="$(dirname "$v")"
    echo "/registries/$reg/versions"; echo "/registries/$reg"
    for d in "$W/storage/$reg"/*/; do
      ver="$(basename "$d")"
      [ -f "$d/registry.json" ] || continue
      echo "/registries/$reg/$ver"
      (cd "$d" && find . -type f ! -name registry.json | sed 's|^\./||') | while read -r f; do
        echo "/registries/$reg/$ver/files/$f"
      done
    done
  done
} >"$W/reads.txt"
# Requests that must fail (4xx asked for).
cat >"$W/bad.txt" <<'EOF'
GET /registries/@rack/Bad_Segment
GET /registries/@rack/%zz
GET /registries/@BAD/x
GET /registries/@rack/quality/eslint/1.0.0/oops
GET /registries/@rack/quality/eslint/99.0.0
GET /registries/@rack/nothing-here
GET /presets/Bad_Name
GET /presets/no-such-preset
GET /schemas/evil.json
GET /no/such/route
GET /namespaces/@BAD/registries
GET /namespaces/@undeclared-ns/registries
GET /registries/@company/anything
GET /registries/@secret/anything
DELETE /namespaces
PUT /registries/@rack/quality/eslint
POST /health
EOF
# The wrk script: reads (a quarter conditional on the current ETag, a third compressed) and the
# bad requests, picked at random; status codes counted per thread, printed at the end.
python3 - "$W/reads.txt" "$W/bad.txt" "$URL" >"$W/soak.lua" <<'PY'
import sys, urllib.request, urllib.error
reads = [l.strip() for l in open(sys.argv[1]) if l.strip()]
bad = [l.split() for l in open(sys.argv[2]) if l.strip()]
def lua(s): return '"' + s.replace('\\', '\\\\').replace('"', '\\"') + '"'
rows = []
for i, path in enumerate(reads):
    enc = "gzip, br" if i % 3 == 0 else None
    rows.append(("GET", path, None, enc))
    try:
        with urllib.request.urlopen(sys.argv[3] + path) as r:
            etag = r.headers.get("ETag")
    except urllib.error.HTTPError:
        etag = None
    if etag:
        rows.append(("GET", path, etag, enc))
for m, p in bad:
    rows.append((m, p, None, None))
print("local reqs = {")
for m, p, inm, enc in rows:
    print("  {%s, %s, %s, %s}," % (lua(m), lua(p), lua(inm) if inm else "nil", lua(enc) if enc else "nil"))
print("}")
print(r'''
local threads = {}
function setup(thread) table.insert(threads, thread) end
counts = {}
function init(args) math.randomseed(os.time() + #threads * 7919) end
function request()
  local r = reqs[math.random(#reqs)]
  local h = {}
  if r[3] then h["If-None-Match"] = r[3] end
  if r[4] then h["Accept-Encoding"] = r[4] end
  return wrk.format(r[1], r[2], h)
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("counts")) do total[s] = (total[s] or 0) + n end
  end
  for s, n in pairs(total) do io.write(string.format("status %d %d\n", s, n)) end
end
''')
PY
say "soak: $(wc -l <"$W/reads.txt") read URLs, $(wc -l <"$W/bad.txt") bad requests; $SECS s (warm-up $WARMUP s) on $URL"

# A large template file for the slow readers: the biggest one stored.
big="$(cd "$W/storage" && find @rack -type f ! -name registry.json ! -name versions.json -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2)"
big_url="$(python3 - "$big" <<'PY'
import sys, re
p = sys.argv[1].split("/")
# @rack/<segs...>/<version>/<file path>: the version is the first SemVer-looking part
for i, s in enumerate(p):
    if i > 0 and re.fullmatch(r"\d+\.\d+\.\d+.*", s):
        print("/registries/" + "/".join(p[:i + 1]) + "/files/" + "/".join(p[i + 1:]))
        break
PY
)"

# Quiet baseline: a short warm-up burst, then the fds with no client connected.
wrk -t2 -c8 -d5s -s "$W/soak.lua" "$URL" >/dev/null 2>&1 || true
sleep 2
fds_before="$(ls "/proc/$PID/fd" | wc -l)"

# Uploads: new versions of @rack/soak-<n> (soak-<n>-<k> with SOAK_VERSIONS_PER_REGISTRY); every
# 5th a wrong checksum, every 7th a repeat.
uploader() { # n
  local n="$1" i=0 dir="$W/up$1" code
  mkdir -p "$dir/pkg/templates"
  head -c 20000 /dev/urandom | base64 >"$dir/pkg/templates/index.ts"
  : >"$W/uploads.$n"
  while [ ! -f "$W/stop" ]; do
    i=$((i + 1))
    local name="soak-$n" j="$i"
    if [ "$PER_REG" -gt 0 ]; then name="soak-$n-$(((i - 1) / PER_REG))"; j=$(((i - 1) % PER_REG + 1)); fi
    local v="1.0.$j"
    [ $((i % 7)) = 0 ] && v="1.0.1"
    cat >"$dir/pkg/registry.json" <<EOF
{"name":"$name","namespace":"@rack","version":"$v","type":"registry:build","priority":1,
 "files":[{"path":"templates/index.ts","target":"src/index.ts","type":"registry:lib"}]}
EOF
    tar -czf "$dir/pkg.tgz" -C "$dir/pkg" registry.json templates
    local sum; sum="$(sha256sum "$dir/pkg.tgz" | cut -d' ' -f1)"
    [ $((i % 5)) = 0 ] && sum="$(printf '%064d' 0)"
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
      -F "package=@$dir/pkg.tgz;type=application/gzip" -F "checksum=$sum" "$URL/registries" || echo 000)"
    echo "$code" >>"$W/uploads.$n"
  done
}

# The load.
start=$(date +%s)
wrk -t2 -c"$CONNS" -d"${SECS}s" --timeout 10s -s "$W/soak.lua" "$URL" >"$W/wrk.out" 2>&1 &
PIDS+=($!)
wrk_pid=$!
python3 "$ROOT/bench/soak_conns.py" 127.0.0.1 "$PORT" "$SECS" "$IDLE" "$SLOW" "$big_url" >"$W/conns.json" 2>"$W/conns.err" &
PIDS+=($!)
conns_pid=$!
for n in $(seq 1 "$UPLOADERS"); do uploader "$n" & PIDS+=($!); done
printf 't_s\trss_kib\tfds\n' >"$W/samples.tsv"
while [ $(($(date +%s) - start)) -lt "$SECS" ]; do
  kill -0 "$PID" 2>/dev/null || break
  printf '%s\t%s\t%s\n' "$(($(date +%s) - start))" "$(rss_kib "$PID")" "$(ls "/proc/$PID/fd" | wc -l)" >>"$W/samples.tsv"
  sleep "$PERIOD"
done
touch "$W/stop"
wait "$wrk_pid" "$conns_pid" || true
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=()
alive=1; kill -0 "$PID" 2>/dev/null || alive=0
sleep 3
fds_after="$( [ "$alive" = 1 ] && ls "/proc/$PID/fd" | wc -l || echo -1)"

# The verdict.
echo "== wrk"; grep -E 'Requests/sec|requests in|Socket errors|Non-2xx' "$W/wrk.out" || true
echo "== status codes (wrk reads and bad requests)"; grep '^status' "$W/wrk.out" | sort -k2n
echo "== uploads"; { cat "$W"/uploads.* 2>/dev/null || true; } | sort | uniq -c
echo "== idle/slow connections"; cat "$W/conns.json"
echo "== samples (t, RSS KiB, fds)"; cat "$W/samples.tsv"
python3 - "$W" "$WARMUP" "$fds_before" "$fds_after" "$alive" "$SECS" "$WINDOW" <<'PY'
import json, glob, sys
w, warmup, fds_before, fds_after, alive = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
secs, window = int(sys.argv[6]), int(sys.argv[7])
# Two windows that do not overlap: the one after warm-up and the last one.
window = max(1, min(window, (secs - warmup) // 2))
fails = []
codes = {}
for line in open(w + "/wrk.out"):
    if line.startswith("status "):
        _, s, n = line.split(); codes[s] = codes.get(s, 0) + int(n)
reqs = sum(codes.values())
ups = {}
for f in glob.glob(w + "/uploads.*"):
    for line in open(f):
        ups[line.strip()] = ups.get(line.strip(), 0) + 1
conns = json.load(open(w + "/conns.json")) if open(w + "/conns.json").read().strip() else {"statuses": {}}
five = sum(n for s, n in list(codes.items()) + list(ups.items()) + list(conns["statuses"].items()) if s.startswith("5"))
if five: fails.append(f"{five} responses 5xx")
if ups.get("000"): fails.append(f"{ups['000']} uploads without an answer")
if not alive: fails.append("the server died")
samples = [l.split("\t") for l in open(w + "/samples.tsv").read().splitlines()[1:]]
samples = [(int(t), int(r), int(f)) for t, r, f in samples if r]
after = [s for s in samples if s[0] >= warmup]
first = [s[1] for s in after if s[0] < warmup + window]
last = [s[1] for s in after if s[0] >= secs - window]
if first and last:
    # Means over windows: single samples swing by a few MiB with the requests in flight.
    ref, end, peak = sum(first) / len(first), sum(last) / len(last), max(s[1] for s in after)
    growth = (end - ref) / ref * 100
    print(f"RSS mean over {warmup}-{warmup + window} s {ref/1024:.1f} MiB, over the last {window} s "
          f"{end/1024:.1f} MiB ({growth:+.1f} %); last sample {after[-1][1]/1024:.1f} MiB, peak {peak/1024:.1f} MiB")
    if growth >= 10: fails.append(f"RSS grew {growth:.1f} % after warm-up")
else:
    fails.append("no sample after warm-up")
print(f"open fds with no load: before {fds_before}, after {fds_after}; during load min {min(s[2] for s in samples)} max {max(s[2] for s in samples)}")
if fds_after > fds_before: fails.append(f"fds grew from {fds_before} to {fds_after}")
print(f"soak: {reqs} wrk requests {json.dumps(codes, sort_keys=True)}, uploads {json.dumps(ups, sort_keys=True)}, "
      f"conns opened {conns.get('opened')}, closed by server {conns.get('closed_by_server')}: "
      + ("PASS" if not fails else "FAIL: " + "; ".join(fails)))
sys.exit(1 if fails else 0)
PY
