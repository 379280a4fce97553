# Shared helpers of the bench/ scripts (sourced, not run).

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: $*"; exit 1; }

# nginx, wrk and curl, installed with apt-get when missing (needs root then).
need_tools() {
  local need=()
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v wrk >/dev/null || need+=(wrk)
  command -v curl >/dev/null || need+=(curl)
  if [ "${#need[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${need[*]} (apt-get install -y ${need[*]})"
    say "installing ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
}

wait_http() {
  for _ in $(seq 1 400); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.05
  done
  die "no answer from $1"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

cleanup_pids() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

# 123.45us | 1.23ms | 1.02s -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
    printf "%.3f", n }'
}

# wrk once: url then wrk arguments -> "rps|p50_ms|p99_ms|non2xx3xx|errors"
wrk_once() {
  local url="$1"; shift
  local out
  out="$(wrk "$@" "$url" 2>&1)" || { say "$out"; die "wrk failed"; }
  local rps p50 p99 bad errs
  rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
  p50="$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")"
  p99="$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
  bad="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")"
  errs="$(awk '/Socket errors:/ {print}' <<<"$out")"
  printf '%s|%s|%s|%s|%s' "$rps" "$p50" "$p99" "${bad:-0}" "${errs:-}"
}

# Medians of several wrk_once results: "rps|p50|p99|bad (sum)|errors (joined)".
medians() {
  printf '%s\n' "$@" | awk -F'|' '
    function med(col,   n, i, j, t, v) {
      n = 0; for (i = 1; i <= NR; i++) v[++n] = row[i, col] + 0
      for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
      return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    { for (c = 1; c <= 5; c++) row[NR, c] = $c; bad += $4; if ($5 != "") errs = errs $5 " " }
    END { printf "%.2f|%.3f|%.3f|%d|%s", med(1), med(2), med(3), bad, errs }'
}

# RACK_FIXTURES, defaulting to ../shared/fixtures/rack-storage beside the repository (needs ROOT),
# made absolute and exported; dies with where to put it when missing.
fixtures() {
  RACK_FIXTURES="${RACK_FIXTURES:-$ROOT/../shared/fixtures/rack-storage}"
  [ -f "$RACK_FIXTURES/.healthcheck" ] ||
    die "fixtures not found at $RACK_FIXTURES (put ../shared next to the repository or set RACK_FIXTURES)"
  RACK_FIXTURES="$(cd "$RACK_FIXTURES" && pwd)"
  export RACK_FIXTURES
}

# Median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
