#!/usr/bin/env bash
# Reads at scale, side by side with nginx in one run: namespace listings of large namespaces,
# and random access over many distinct template files (a working set below and above the hot
# cache), the way a fleet of `rk` clients reads, rather than one hot URL.
#
# Usage: bench/scale.sh
# Knobs (environment):
#   SCALE_DURATION=5     seconds per wrk run
#   SCALE_ROUNDS=3       interleaved runs per server and row (medians are reported)
#   SCALE_CONNECTIONS=32 wrk connections (2 threads)
#   SCALE_LISTS="10000 100000"   namespace sizes for the listing rows (" ": none)
#   SCALE_FILES_SMALL=5000       distinct 6 KB files for the in-cache random row (30 MB)
#   SCALE_FILES_LARGE=20000      distinct 6 KB files for the over-cache random row (120 MB)
#   SCALE_ROWS=all       or a regex on row names
#   CACHE_MAX_BYTES      passed to our server (default 64 MiB, as shipped)
#   SCALE_NGINX_OPEN_FILES=10000  nginx's open_file_cache entries (`off`: none). With
#                        CACHE_MAX_BYTES, splits the over-cache row into its hit and miss paths
#                        (docs/PERFORMANCE.md, "Item 3, seventh pass"). Keep it under the
#                        descriptor limit (`ulimit -n`): past it nginx fails some requests, which the
#                        row reports as a WARNING
#   SCALE_BIN            a server binary to measure instead of building this checkout
#
# Prints a Markdown table (req/s, p50/p99 per server, ratio of the medians us/nginx, and the
# median and range of the per-round ratios; each round's numbers go to stderr as it runs).
# Every row checks first that both servers answer 200 with the same bytes. Numbers go to
# docs/PERFORMANCE.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/bench/lib.sh"
DURATION="${SCALE_DURATION:-5}"
ROUNDS="${SCALE_ROUNDS:-3}"
CONNS="${SCALE_CONNECTIONS:-32}"
LISTS="${SCALE_LISTS:-10000 100000}"
FILES_SMALL="${SCALE_FILES_SMALL:-5000}"
FILES_LARGE="${SCALE_FILES_LARGE:-20000}"
ROWS="${SCALE_ROWS:-all}"
NGINX_OPEN_FILES="${SCALE_NGINX_OPEN_FILES:-10000}"
case "$NGINX_OPEN_FILES" in
  off) OPEN_FILE_CACHE="open_file_cache off;" ;;
  *[!0-9]* | "") die "SCALE_NGINX_OPEN_FILES: a number of entries or off" ;;
  *) OPEN_FILE_CACHE="open_file_cache max=$NGINX_OPEN_FILES inactive=60s;" ;;
esac
US_PORT=18090
NGINX_PORT=18091

need_tools
if [ -n "${SCALE_BIN:-}" ]; then
  BIN="$(realpath "$SCALE_BIN")"
else
  say "== building the release binary"
  (cd "$ROOT" && cargo build --release -p rack-registry -q)
  BIN="$ROOT/target/release/rack-registry"
fi

W="$(mktemp -d /tmp/rack-scale.XXXXXX)"
chmod 755 "$W"
PIDS=()
trap 'cleanup_pids; rm -rf "$W"' EXIT
S="$W/storage"
mkdir -p "$S"
: >"$S/.healthcheck"

say "== generating the storage (listings: $LISTS; files: $FILES_LARGE x 6 KB)"
python3 - "$S" "$LISTS" "$FILES_LARGE" <<'PY'
import os, sys, random
root, lists, nfiles = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
for n in lists:
    ns = os.path.join(root, f"@big{n}")
    for i in range(int(n)):
        d = os.path.join(ns, f"reg-{i:06d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "versions.json"), "w") as f:
            f.write('{\n  "versions": [\n    "1.0.0"\n  ]\n}\n')
tpl = os.path.join(root, "@rand", "r", "1.0.0", "templates")
os.makedirs(tpl, exist_ok=True)
rnd = random.Random(7)
alphabet = "abcdefghijklmnopqrstuvwxyz      \n{}();=."
for i in range(nfiles):
    body = "".join(rnd.choice(alphabet) for _ in range(6144))
    with open(os.path.join(tpl, f"f-{i:06d}.ts"), "w") as f:
        f.write(body)
with open(os.path.join(root, "@rand", "r", "versions.json"), "w") as f:
    f.write('{\n  "versions": [\n    "1.0.0"\n  ]\n}\n')
PY
{
  printf '{"@rand": []'
  for n in $LISTS; do printf ', "@big%s": []' "$n"; done
  printf '}\n'
} >"$W/auth.json"

env -i PATH="$PATH" HOST=127.0.0.1 PORT="$US_PORT" STORAGE_ROOT="$S" AUTH_CONFIG_PATH="$W/auth.json" \
  LOG_FORMAT=json RATE_LIMIT_MAX=0 ${CACHE_MAX_BYTES:+CACHE_MAX_BYTES=$CACHE_MAX_BYTES} \
  "$BIN" serve >"$W/us.log" 2>&1 &
PIDS+=($!)
US="http://127.0.0.1:$US_PORT"
wait_http "$US/health"

mkdir -p "$W/nginx/tmp" "$W/static"
for n in $LISTS; do
  curl -fs "$US/namespaces/@big$n/registries" >"$W/static/big$n.json"
done
cat >"$W/nginx/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 4096; }
http {
  types { application/json json; text/typescript ts; }
  default_type application/octet-stream;
  charset utf-8;
  charset_types text/typescript;
  access_log $W/nginx/access.log combined buffer=64k flush=20ms;
  client_body_temp_path $W/nginx/tmp/body;
  proxy_temp_path $W/nginx/tmp/proxy;
  fastcgi_temp_path $W/nginx/tmp/fastcgi;
  uwsgi_temp_path $W/nginx/tmp/uwsgi;
  scgi_temp_path $W/nginx/tmp/scgi;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 65; keepalive_requests 1000000;
  $OPEN_FILE_CACHE
  etag on;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location ~ ^/namespaces/@(big[0-9]+)/registries\$ {
      default_type application/json; types { }
      alias $W/static/\$1.json;
      add_header Cache-Control "public, max-age=60";
    }
    location ~ ^/registries/(.+)/([0-9]+\.[0-9]+\.[0-9]+)/files/(.+)\$ {
      alias $S/\$1/\$2/\$3;
      add_header Cache-Control "public, max-age=31536000, immutable";
    }
  }
}
EOF
"$NGINX" -c "$W/nginx/nginx.conf" -p "$W/nginx" &
PIDS+=($!)
NG="http://127.0.0.1:$NGINX_PORT"
wait_http "$NG/registries/@rand/r/1.0.0/files/templates/f-000000.ts"

# wrk scripts: one URL, or a random one of a list of paths.
random_script() { # count -> lua file
  local lua="$W/random-$1.lua"
  {
    echo 'local paths = {}'
    echo "for i = 0, $(($1 - 1)) do paths[#paths + 1] = string.format('/registries/@rand/r/1.0.0/files/templates/f-%06d.ts', i) end"
    echo 'math.randomseed(os.time() + math.floor(os.clock() * 1e6))'
    echo 'request = function() return wrk.format(nil, paths[math.random(#paths)]) end'
  } >"$lua"
  echo "$lua"
}

same_bytes() { # path
  cmp -s <(curl -fs "$NG$1") <(curl -fs "$US$1") || die "bodies differ for $1"
}

TABLE="$W/table.md"
{
  echo "| row | nginx req/s | nginx p50 ms | nginx p99 ms | us req/s | us p50 ms | us p99 ms | us/nginx | rounds us/nginx: median (min-max) |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|"
} >"$TABLE"

row() { # name path-or-empty lua-or-empty
  local name="$1" path="$2" lua="$3"
  if [ "$ROWS" != all ] && ! [[ "$name" =~ $ROWS ]]; then return; fi
  local rn=() ru=() i args=(-t2 -c"$CONNS" -d"${DURATION}s" --latency)
  [ -n "$lua" ] && args+=(-s "$lua")
  for ((i = 1; i <= ROUNDS; i++)); do
    say "-- $name: round $i/$ROUNDS"
    if ((i % 2)); then
      rn+=("$(wrk_once "$NG${path:-/}" "${args[@]}")"); ru+=("$(wrk_once "$US${path:-/}" "${args[@]}")")
    else
      ru+=("$(wrk_once "$US${path:-/}" "${args[@]}")"); rn+=("$(wrk_once "$NG${path:-/}" "${args[@]}")")
    fi
    say "   nginx ${rn[-1]%%|*} req/s, us ${ru[-1]%%|*} req/s"
  done
  # Each round's pair of runs side by side: a ratio per round is immune to the machine's
  # drift between rounds (on a shared VM the medians of each server alone move by 10 %).
  local per_round=() ratios="n/a"
  mapfile -t per_round < <(for ((i = 0; i < ROUNDS; i++)); do
    awk -v n="${rn[i]%%|*}" -v u="${ru[i]%%|*}" 'BEGIN { if (n > 0) printf "%.3f\n", u / n }'
  done | sort -n)
  if ((${#per_round[@]})); then
    ratios="$(printf '%.2f (%.2f-%.2f)' "$(printf '%s\n' "${per_round[@]}" | median)" \
      "${per_round[0]}" "${per_round[-1]}")"
  fi
  local n u
  n="$(medians "${rn[@]}")"; u="$(medians "${ru[@]}")"
  awk -F'|' -v name="$name" -v n="$n" -v u="$u" -v r="$ratios" 'BEGIN {
    split(n, a, "|"); split(u, b, "|");
    if (a[4] + b[4] > 0) printf "WARNING: %s: non-2xx answers (nginx %d, us %d)\n", name, a[4], b[4] > "/dev/stderr";
    printf "| %s | %.0f | %s | %s | %.0f | %s | %s | %.2f | %s |\n", name, a[1], a[2], a[3], b[1], b[2], b[3], (a[1] > 0 ? b[1] / a[1] : 0), r }' >>"$TABLE"
}

for n in $LISTS; do
  p="/namespaces/@big$n/registries"
  same_bytes "$p"
  curl -fs "$US$p" >/dev/null # warm
  row "listing, $n registries" "$p" ""
done
same_bytes "/registries/@rand/r/1.0.0/files/templates/f-000001.ts"
for count in "$FILES_SMALL" "$FILES_LARGE"; do
  lua="$(random_script "$count")"
  # Warm both: a few seconds of the same random load.
  for base in "$NG" "$US"; do wrk -t2 -c"$CONNS" -d3s -s "$lua" "$base/" >/dev/null 2>&1 || true; done
  row "random 6 KB files, $count distinct ($((count * 6 / 1000)) MB)" "" "$lua"
done

echo
echo "Scale benchmark, $(date -u +%Y-%m-%d), $(nproc) CPUs, wrk -t2 -c$CONNS, ${ROUNDS}x${DURATION}s interleaved, medians"
echo
cat "$TABLE"
echo
echo "our RSS after the runs: $(rss_kib "${PIDS[0]}") KiB"
