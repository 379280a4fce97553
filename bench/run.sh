#!/usr/bin/env bash
# Read-path benchmark: rack-registry against nginx serving the same files under the same URLs.
#
# Usage: bench/run.sh            (from anywhere; needs root only to apt-get nginx/wrk if missing)
# Knobs (environment):
#   BENCH_DURATION=5      seconds per run
#   BENCH_ROUNDS=3        runs per server and row, interleaved (nginx, us, us, nginx, ...);
#                         the table gives the median of each column
#   BENCH_NGINX_LOG_BUFFER=1  nginx buffers its access log (buffer=64k flush=20ms), as our server
#                         batches its log lines every 20 ms; 0: one write(2) per request
#   BENCH_THREADS=2       wrk threads
#   BENCH_CONNECTIONS=32  wrk connections
#   BENCH_PIN=0           1: server(s) on CPU 0 (nginx worker_processes 1, HTTP_WORKERS=1),
#                         wrk on CPU 1; 0: no pinning, nginx worker_processes auto, our default
#                         HTTP workers (one per CPU), wrk shares the CPUs with them
#   BENCH_ROWS=all        or a regex on row names (e.g. 'manifest|template')
#   BENCH_LIST_N=10000    registries in the generated namespace for the listing timing
#   BENCH_KEEP=0          1: keep the work directory (configs, logs) for inspection
#   RACK_FIXTURES         the fixture storage root (default: ../shared/fixtures/rack-storage)
#   BENCH_BIN             our binary to measure (default: build target/release/rack-registry),
#                         e.g. the static musl build target/x86_64-unknown-linux-musl/release/...
#
# Prints a Markdown table (requests/s, p50/p99 latency, ratio us/nginx per row), our idle RSS
# before and after the runs, and the p50 listing time of a namespace of BENCH_LIST_N registries.
# See docs/PERFORMANCE.md for what is measured and why the setup is fair.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${BENCH_DURATION:-5}"
ROUNDS="${BENCH_ROUNDS:-3}"
NGINX_LOG_BUFFER="${BENCH_NGINX_LOG_BUFFER:-1}"
THREADS="${BENCH_THREADS:-2}"
CONNS="${BENCH_CONNECTIONS:-32}"
PIN="${BENCH_PIN:-0}"
ROWS="${BENCH_ROWS:-all}"
LIST_N="${BENCH_LIST_N:-10000}"
US_PORT="${BENCH_US_PORT:-18080}"
NGINX_PORT="${BENCH_NGINX_PORT:-18081}"
BIG_PORT="${BENCH_BIG_PORT:-18082}"

. "$ROOT/bench/lib.sh"

# --- tools -------------------------------------------------------------------------------------
need_tools

fixtures

# --- build -------------------------------------------------------------------------------------
if [ -n "${BENCH_BIN:-}" ]; then
  BIN="$(realpath "$BENCH_BIN")"
else
  say "== building the release binary"
  (cd "$ROOT" && cargo build --release -p rack-registry -q)
  BIN="$ROOT/target/release/rack-registry"
fi
[ -x "$BIN" ] || die "no $BIN"

# --- work directory ----------------------------------------------------------------------------
W="$(mktemp -d /tmp/rack-bench.XXXXXX)"
chmod 755 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then say "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

S="$W/storage"
cp -r "$RACK_FIXTURES" "$S"
chmod -R u+w,a+rX "$S"
# A larger template file (9 KiB of TypeScript: the registry-item schema as a constant), so that
# one template row is above the 1 KiB compression threshold. Every fixture template is smaller.
{
  printf 'export const registryItemSchema = '
  cat "$S/schema/registry-item.json"
  printf ' as const;\n'
} >"$S/@rack/build/rollup/1.0.0/templates/schema.ts"
printf '{"@rack": []}\n' >"$W/auth.json"

# --- our server --------------------------------------------------------------------------------
if [ "$PIN" = 1 ]; then
  SERVER_CPU=(taskset -c 0); WRK_CPU=(taskset -c 1); NGINX_WORKERS=1; HTTP_THREADS=1
else
  SERVER_CPU=(); WRK_CPU=(); NGINX_WORKERS=auto; HTTP_THREADS=
fi

start_us() { # port storage auth log -> pid in $!
  env -i PATH="$PATH" HOST=127.0.0.1 PORT="$1" STORAGE_ROOT="$2" AUTH_CONFIG_PATH="$3" \
    LOG_FORMAT=json RATE_LIMIT_MAX=1000000000 ${HTTP_THREADS:+HTTP_WORKERS=$HTTP_THREADS} \
    "${SERVER_CPU[@]}" "$BIN" serve >"$4" 2>&1 &
}

start_us "$US_PORT" "$S" "$W/auth.json" "$W/us.log"
US_PID=$!
PIDS+=("$US_PID")
US="http://127.0.0.1:$US_PORT"
wait_http "$US/health"
sleep 1
RSS_START=$(rss_kib "$US_PID")

# --- nginx -------------------------------------------------------------------------------------
mkdir -p "$W/nginx/tmp" "$W/nginx/static"
curl -fs "$US/namespaces/@rack/registries" >"$W/nginx/static/rack-registries.json"
latest="$(grep -o '"[0-9][^"]*"' "$S/@rack/build/rollup/versions.json" | head -1 | tr -d '"')"
[ -f "$S/@rack/build/rollup/$latest/registry.json" ] || die "cannot find the latest version of @rack/build/rollup"
NGINX_LOG_OPTS=""
[ "$NGINX_LOG_BUFFER" = 1 ] && NGINX_LOG_OPTS=" combined buffer=64k flush=20ms"
cat >"$W/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 4096; }
http {
  types {
    application/json json;
    text/typescript ts tsx;
    text/javascript js mjs cjs;
    text/plain txt;
  }
  default_type application/octet-stream;
  charset utf-8;
  charset_types text/typescript text/javascript text/plain;
  access_log $W/nginx/access.log$NGINX_LOG_OPTS;
  client_body_temp_path $W/nginx/tmp/body;
  proxy_temp_path $W/nginx/tmp/proxy;
  fastcgi_temp_path $W/nginx/tmp/fastcgi;
  uwsgi_temp_path $W/nginx/tmp/uwsgi;
  scgi_temp_path $W/nginx/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  etag on;
  gzip on;
  gzip_vary on;
  gzip_min_length 1024;
  gzip_types application/json text/typescript text/javascript text/plain;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    # latest: a static mapping to the latest manifest
    location = /registries/@rack/build/rollup {
      default_type application/json; types { }
      alias $S/@rack/build/rollup/$latest/registry.json;
      add_header Cache-Control "public, max-age=60";
    }
    # namespace listing: a pre-generated JSON file
    location = /namespaces/@rack/registries {
      default_type application/json; types { }
      alias $W/nginx/static/rack-registries.json;
      add_header Cache-Control "public, max-age=60";
    }
    location ~ ^/registries/(.+)/versions\$ {
      default_type application/json; types { }
      alias $S/\$1/versions.json;
      add_header Cache-Control "public, max-age=60";
    }
    location ~ ^/registries/(.+)/([0-9]+\.[0-9]+\.[0-9]+)/files/(.+)\$ {
      alias $S/\$1/\$2/\$3;
      add_header Cache-Control "public, max-age=31536000, immutable";
    }
    location ~ ^/registries/(.+)/([0-9]+\.[0-9]+\.[0-9]+)\$ {
      default_type application/json; types { }
      alias $S/\$1/\$2/registry.json;
      add_header Cache-Control "public, max-age=31536000, immutable";
    }
  }
}
EOF
"${SERVER_CPU[@]}" "$NGINX" -c "$W/nginx/nginx.conf" -p "$W/nginx" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
NG="http://127.0.0.1:$NGINX_PORT"
wait_http "$NG/registries/@rack/build/rollup/versions"

# --- rows --------------------------------------------------------------------------------------
# name | path
RESOURCES=(
  "manifest 1.0.0|/registries/@rack/build/rollup/1.0.0"
  "latest|/registries/@rack/build/rollup"
  "versions list|/registries/@rack/build/rollup/versions"
  "template (407 B json)|/registries/@rack/build/typescript/1.0.0/files/templates/tsconfig.json"
  "template (9 KiB ts)|/registries/@rack/build/rollup/1.0.0/files/templates/schema.ts"
  "registry listing|/namespaces/@rack/registries"
)

# Header dump and body of one request: status, content-encoding, etag.
probe() { # url [header] -> "status|encoding|etag|bytes|sha"
  local url="$1" h="${2:-X-Bench: 1}" hdr="$W/probe.h" body="$W/probe.b"
  rm -f "$hdr" "$body"
  curl -s -D "$hdr" -o "$body" -H "$h" "$url" >/dev/null
  touch "$body"
  local status enc tag ctype
  status="$(awk 'NR==1 {print $2}' "$hdr")"
  ctype="$(awk -F': ' 'tolower($1)=="content-type" {gsub("\r",""); print $2}' "$hdr")"
  enc="$(awk -F': ' 'tolower($1)=="content-encoding" {gsub("\r",""); print $2}' "$hdr")"
  tag="$(awk -F': ' 'tolower($1)=="etag" {gsub("\r",""); print $2}' "$hdr")"
  printf '%s|%s|%s|%s|%s|%s' "$status" "${enc:-identity}" "$tag" "$(wc -c <"$body")" \
    "$(sha256sum "$body" | cut -c1-16)" "$ctype"
}

# wrk once: "rps|p50_ms|p99_ms|non2xx3xx|errors"
run_wrk() { # url [header]
  local out="$W/wrk.out"
  local args=(-t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency)
  [ -n "${2:-}" ] && args+=(-H "$2")
  "${WRK_CPU[@]}" wrk "${args[@]}" "$1" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed"; }
  local rps p50 p99 bad errs
  rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
  p50="$(to_ms "$(awk '$1=="50%" {print $2}' "$out")")"
  p99="$(to_ms "$(awk '$1=="99%" {print $2}' "$out")")"
  bad="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")"
  errs="$(awk '/Socket errors:/ {print}' "$out")"
  printf '%s|%s|%s|%s|%s' "$rps" "$p50" "$p99" "${bad:-0}" "${errs:-}"
}


TABLE="$W/table.md"
NOTES="$W/notes.txt"
: >"$NOTES"
{
  echo "| row | encoding | nginx req/s | nginx p50 ms | nginx p99 ms | us req/s | us p50 ms | us p99 ms | us/nginx |"
  echo "|---|---|--:|--:|--:|--:|--:|--:|--:|"
} >"$TABLE"

row() { # name path mode(identity|gzip|304)
  local name="$1" path="$2" mode="$3" hn="" hu=""
  if [ "$ROWS" != all ] && ! [[ "$name" =~ $ROWS ]]; then return; fi
  case "$mode" in
    gzip) hn="Accept-Encoding: gzip"; hu="$hn" ;;
    304)
      local tn tu
      tn="$(probe "$NG$path" | cut -d'|' -f3)"
      tu="$(probe "$US$path" | cut -d'|' -f3)"
      hn="If-None-Match: $tn"; hu="If-None-Match: $tu" ;;
  esac
  # Check what each server answers before measuring it.
  local pn pu
  pn="$(probe "$NG$path" "${hn:-X-Bench: 1}")"
  pu="$(probe "$US$path" "${hu:-X-Bench: 1}")"
  echo "$name [$mode] nginx: $pn | us: $pu" >>"$NOTES"
  local want=200; [ "$mode" = 304 ] && want=304
  [ "${pn%%|*}" = "$want" ] || die "$name [$mode]: nginx answered ${pn%%|*}"
  [ "${pu%%|*}" = "$want" ] || die "$name [$mode]: we answered ${pu%%|*}"
  if [ "$mode" = identity ] && [ "$(cut -d'|' -f4-5 <<<"$pn")" != "$(cut -d'|' -f4-5 <<<"$pu")" ]; then
    echo "WARNING: $name: identity bodies differ (nginx $pn, us $pu)" >>"$NOTES"
  fi
  if [ "$mode" != 304 ] && [ "$(cut -d'|' -f6 <<<"$pn" | cut -d';' -f1)" != "$(cut -d'|' -f6 <<<"$pu" | cut -d';' -f1)" ]; then
    echo "WARNING: $name: content types differ (nginx $pn, us $pu)" >>"$NOTES"
  fi
  # ROUNDS interleaved runs per server (nginx first in odd rounds, us first in even ones), so
  # that a drift of this shared machine hits both alike; the table shows the medians.
  local rn=() ru=() i
  for ((i = 1; i <= ROUNDS; i++)); do
    say "-- $name [$mode]: round $i/$ROUNDS"
    if ((i % 2)); then
      rn+=("$(run_wrk "$NG$path" "$hn")"); ru+=("$(run_wrk "$US$path" "$hu")")
    else
      ru+=("$(run_wrk "$US$path" "$hu")"); rn+=("$(run_wrk "$NG$path" "$hn")")
    fi
  done
  local n_rps n_p50 n_p99 n_bad n_err u_rps u_p50 u_p99 u_bad u_err
  IFS='|' read -r n_rps n_p50 n_p99 n_bad n_err <<<"$(medians "${rn[@]}")"
  IFS='|' read -r u_rps u_p50 u_p99 u_bad u_err <<<"$(medians "${ru[@]}")"
  [ "$n_bad" = 0 ] || echo "WARNING: $name [$mode]: nginx gave $n_bad non-2xx/3xx answers" >>"$NOTES"
  [ "$u_bad" = 0 ] || echo "WARNING: $name [$mode]: we gave $u_bad non-2xx/3xx answers" >>"$NOTES"
  [ -z "$n_err$u_err" ] || echo "WARNING: $name [$mode]: socket errors: nginx '$n_err' us '$u_err'" >>"$NOTES"
  local enc_n enc_u
  enc_n="$(cut -d'|' -f2 <<<"$pn")"; enc_u="$(cut -d'|' -f2 <<<"$pu")"
  local enc="$mode"
  [ "$mode" = gzip ] && enc="gzip (nginx: $enc_n, us: $enc_u)"
  [ "$mode" = 304 ] && enc="304 (If-None-Match)"
  local ratio
  ratio="$(awk -v a="$u_rps" -v b="$n_rps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
  printf '| %s | %s | %.0f | %s | %s | %.0f | %s | %s | %s |\n' \
    "$name" "$enc" "$n_rps" "$n_p50" "$n_p99" "$u_rps" "$u_p50" "$u_p99" "$ratio" >>"$TABLE"
}

say "== throughput: $ROUNDS x ${DURATION}s per server and row, wrk -t$THREADS -c$CONNS, pin=$PIN"
for mode in identity gzip 304; do
  for r in "${RESOURCES[@]}"; do
    row "${r%%|*}" "${r#*|}" "$mode"
  done
done

sleep 2
RSS_END=$(rss_kib "$US_PID")
NGINX_RSS=0
for p in $(pgrep -P "$NGINX_PID" 2>/dev/null) "$NGINX_PID"; do
  NGINX_RSS=$((NGINX_RSS + $(rss_kib "$p" 2>/dev/null || echo 0)))
done
kill "$US_PID" "$NGINX_PID" 2>/dev/null || true

# --- listing a namespace of LIST_N registries --------------------------------------------------
say "== generating a namespace of $LIST_N registries"
B="$W/big"
mkdir -p "$B/storage/@big"
: >"$B/storage/.healthcheck"
printf '{"@big": []}\n' >"$B/auth.json"
dirs="$W/dirs.txt"
: >"$dirs"
for ((i = 0; i < LIST_N; i++)); do
  printf '%s/storage/@big/cat%02d/reg-%05d/1.0.0\n' "$B" $((i % 10)) "$i" >>"$dirs"
done
xargs mkdir -p <"$dirs"
for ((i = 0; i < LIST_N; i++)); do
  d="$(printf '%s/storage/@big/cat%02d/reg-%05d' "$B" $((i % 10)) "$i")"
  printf '{\n  "versions": [\n    "1.0.0"\n  ]\n}\n' >"$d/versions.json"
  printf '{"name":"reg-%05d","namespace":"@big","version":"1.0.0","type":"registry:lib","files":[]}\n' \
    "$i" >"$d/1.0.0/registry.json"
done
start_us "$BIG_PORT" "$B/storage" "$B/auth.json" "$W/big.log"
BIG_PID=$!
PIDS+=("$BIG_PID")
BIGURL="http://127.0.0.1:$BIG_PORT/namespaces/@big/registries"
wait_http "http://127.0.0.1:$BIG_PORT/health"
COLD_MS="$(curl -s -o "$W/big.json" -w '%{time_total}' "$BIGURL" | awk '{printf "%.1f", $1 * 1000}')"
COUNT="$( (grep -o 'reg-[0-9]*"' "$W/big.json" || true) | wc -l)"
[ "$COUNT" = "$LIST_N" ] || say "WARNING: listing has $COUNT registries, expected $LIST_N"
for _ in $(seq 1 50); do
  curl -s -o /dev/null -w '%{time_total}\n' "$BIGURL"
done | sort -n >"$W/list-times.txt"
LIST_P50="$(awk '{a[NR] = $1} END {printf "%.1f", a[int((NR + 1) / 2)] * 1000}' "$W/list-times.txt")"
LIST_P90="$(awk '{a[NR] = $1} END {printf "%.1f", a[int(NR * 0.9)] * 1000}' "$W/list-times.txt")"
LIST_BYTES="$(wc -c <"$W/big.json")"

# --- report ------------------------------------------------------------------------------------
echo
echo "## Results $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r)"
echo "- ours: $("$BIN" --version)"
echo "- nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')"
echo "- settings: median of $ROUNDS interleaved runs of ${DURATION}s per server and row, nginx access log buffered: $NGINX_LOG_BUFFER, wrk -t$THREADS -c$CONNS --latency, pin=$PIN (nginx worker_processes $NGINX_WORKERS, our HTTP_WORKERS ${HTTP_THREADS:-default = CPUs})"
echo
cat "$TABLE"
echo
echo "| measure | value |"
echo "|---|--:|"
echo "| our RSS after startup (idle) | $((RSS_START / 1024)).$(((RSS_START % 1024) * 10 / 1024)) MiB |"
echo "| our RSS after the runs (idle) | $((RSS_END / 1024)).$(((RSS_END % 1024) * 10 / 1024)) MiB |"
echo "| nginx RSS after the runs (master + workers) | $((NGINX_RSS / 1024)).$(((NGINX_RSS % 1024) * 10 / 1024)) MiB |"
echo "| listing $LIST_N registries: first request | $COLD_MS ms |"
echo "| listing $LIST_N registries: p50 of 50 | $LIST_P50 ms |"
echo "| listing $LIST_N registries: p90 of 50 | $LIST_P90 ms |"
echo "| listing body | $LIST_BYTES bytes |"
echo
echo "Probes (status|encoding|etag|bytes|sha256 prefix|content-type):"
echo
sed 's/^/    /' "$NOTES"
