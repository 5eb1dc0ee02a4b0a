#!/usr/bin/env bash
# Benchmarks artifactapi next to nginx on loopback, then the plugin call
# overhead. Run through `make bench` (which builds first) or directly after
# `make build`.
#
#   BENCH_DURATION     wrk duration per run (default 10s)
#   BENCH_THREADS      wrk threads (default 2)
#   BENCH_CONNECTIONS  wrk connections (default 32)
#   BENCH_SKIP_PLUGIN  set to 1 to skip the plugin call benchmark
#   BENCH_KEEP         set to 1 to keep the temp dir (logs, configs)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-10s}
THREADS=${BENCH_THREADS:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
BIN=$ROOT/target/release/artifactapi
PLUGINS=$ROOT/target/plugins

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------

find_nginx() {
    command -v nginx 2>/dev/null && return
    [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx && return
    return 1
}

missing=()
find_nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    if [[ $EUID -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2 ||
        { "${SUDO[@]}" apt-get update >&2 &&
          "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2; }
fi
NGINX=$(find_nginx) || die "nginx not found"

[[ -x $BIN ]] || die "$BIN is missing: run \`make build\` first"
[[ -d $PLUGINS ]] || die "$PLUGINS is missing: run \`make build\` first"

# Build the plugin benchmark now, so that no compiler runs while measuring.
if [[ ${BENCH_SKIP_PLUGIN:-0} != 1 ]]; then
    log "building the plugin_call benchmark"
    cargo bench -p artifactapi --bench plugin_call --no-run >&2
fi

# Share of CPU time other processes used over one second.
cpu_busy() {
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[2] - x[2]; printf "%.0f%%", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }'
}
BUSY_BEFORE=$(cpu_busy)
[[ ${BUSY_BEFORE%\%} -lt 20 ]] || log "warning: the CPUs were $BUSY_BEFORE busy before measuring"

# --- workspace and cleanup ---------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/artifactapi-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null && return
    local port
    while :; do
        port=$((20000 + RANDOM % 20000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}

wait_http() { # url what
    local i
    for i in $(seq 1 300); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return
        sleep 0.1
    done
    die "$2 did not come up at $1"
}

# --- files -------------------------------------------------------------------

WWW=$WORK/www
mkdir -p "$WWW"
head -c 4096 /dev/urandom >"$WWW/small.bin"
head -c $((1024 * 1024)) /dev/urandom >"$WWW/large.bin"
chmod 755 "$WWW"
chmod 644 "$WWW"/*.bin

# --- nginx -------------------------------------------------------------------

NGX=$WORK/nginx
mkdir -p "$NGX"
NGINX_PORT=$(free_port)
cat >"$NGX/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 10000000;
    default_type application/octet-stream;
    client_body_temp_path $NGX/body;
    proxy_temp_path $NGX/proxy;
    fastcgi_temp_path $NGX/fastcgi;
    uwsgi_temp_path $NGX/uwsgi;
    scgi_temp_path $NGX/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WWW;
    }
}
EOF
log "nginx on 127.0.0.1:$NGINX_PORT"
"$NGINX" -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$NGINX_PORT/small.bin" nginx

# --- artifactapi -------------------------------------------------------------

API_PORT=$(free_port)
cat >"$WORK/remotes.yaml" <<EOF
remotes:
  files:
    type: local
    package: generic
  mirror:
    type: remote
    package: generic
    base_url: "http://127.0.0.1:$NGINX_PORT"
EOF
log "artifactapi on 127.0.0.1:$API_PORT"
RUST_LOG=${BENCH_RUST_LOG:-info} "$BIN" serve \
    --config "$WORK/remotes.yaml" \
    --data "$WORK/data" \
    --plugins "$PLUGINS" \
    --listen "127.0.0.1:$API_PORT" >"$WORK/artifactapi.log" 2>&1 &
PIDS+=($!)
API=http://127.0.0.1:$API_PORT
wait_http "$API/health" artifactapi

for f in small.bin large.bin; do
    curl -fsS -o /dev/null -X PUT --data-binary "@$WWW/$f" "$API/api/v1/remote/files/$f" ||
        die "upload of $f failed (log: $WORK/artifactapi.log)"
done

# check url expected-source file: 200, the source header, the same bytes.
check() {
    local url=$1 want=$2 file=$3 headers status source
    headers=$(curl -sS -D - -o "$WORK/check.out" "$url")
    status=$(printf '%s\n' "$headers" | awk 'NR == 1 { print $2 }')
    source=$(printf '%s\n' "$headers" | tr -d '\r' |
        awk -F': *' 'tolower($1) == "x-artifact-source" { print $2 }')
    [[ $status == 200 ]] || { echo "$url: status $status"; return 1; }
    [[ -z $want || $source == "$want" ]] || { echo "$url: x-artifact-source '$source', want '$want'"; return 1; }
    cmp -s "$WORK/check.out" "$file" || { echo "$url: body differs from $file"; return 1; }
}

for f in small.bin large.bin; do
    check "http://127.0.0.1:$NGINX_PORT/$f" "" "$WWW/$f" >&2 || die "nginx check failed"
    check "$API/api/v1/remote/files/$f" local "$WWW/$f" >&2 || die "local check failed"
    # The first GET fills the cache from nginx; the fill commits once the
    # body is through, so the next GET may need a moment to see it.
    check "$API/api/v1/remote/mirror/$f" "" "$WWW/$f" >&2 || die "remote fill failed"
    ok=
    for _ in $(seq 1 50); do
        if msg=$(check "$API/api/v1/remote/mirror/$f" cache "$WWW/$f"); then ok=1; break; fi
        sleep 0.1
    done
    [[ -n $ok ]] || die "no cache hit: $msg (log: $WORK/artifactapi.log)"
done
log "all GETs answer 200 with the expected x-artifact-source and bytes"

# --- wrk ---------------------------------------------------------------------

# to_mib "1.23GB" -> MiB per second (wrk uses binary units)
to_mib() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = 1 / 1048576
        if (u == "KB") f = 1 / 1024; else if (u == "MB") f = 1; else if (u == "GB") f = 1024; else if (u == "TB") f = 1048576
        printf "%.1f", n * f
    }'
}

ROWS=()
declare -A RPS
run_wrk() { # label key url
    local label=$1 key=$2 url=$3 out rps transfer p50 p99 errors
    log "wrk $label"
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url")
    printf '%s\n' "$out" >"$WORK/wrk-$key.txt"
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    transfer=$(awk '/^Transfer\/sec:/ { print $2 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    errors=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
    [[ -n $rps ]] || die "could not parse wrk output for $label: $out"
    RPS[$key]=$rps
    ROWS+=("$label|$key|$rps|$(to_mib "$transfer")|$p50|$p99|$errors")
}

for size in 4k 1m; do
    case $size in
        4k) f=small.bin name="4 KiB" ;;
        1m) f=large.bin name="1 MiB" ;;
    esac
    run_wrk "nginx, $name" "nginx-$size" "http://127.0.0.1:$NGINX_PORT/$f"
    run_wrk "artifactapi local, $name" "local-$size" "$API/api/v1/remote/files/$f"
    run_wrk "artifactapi remote cache hit, $name" "cache-$size" "$API/api/v1/remote/mirror/$f"
done

# The servers are done: stop them before the plugin benchmark.
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
PIDS=()

CPUS=$(nproc)
MODEL=$(lscpu 2>/dev/null | awk -F': *' '/^Model name/ { print $2; exit }')
echo
echo "### HTTP GET throughput, loopback (wrk -t$THREADS -c$CONNECTIONS -d$DURATION)"
echo
echo "$CPUS CPUs (${MODEL:-unknown}); wrk, nginx and artifactapi share them, so absolute"
echo "numbers are low and both servers are measured the same way. nginx: 1 worker process,"
echo "sendfile on, access_log off. artifactapi: release build, default settings,"
echo "log level ${BENCH_RUST_LOG:-info} (no per-request log lines). Files are random bytes."
echo "CPU busy in the second before measuring: $BUSY_BEFORE (other work skews the numbers)."
echo
echo "| test | requests/s | MiB/s | p50 latency | p99 latency | errors | vs nginx |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for row in "${ROWS[@]}"; do
    IFS='|' read -r label key rps mib p50 p99 errors <<<"$row"
    base=${RPS[nginx-${key##*-}]}
    ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN { printf "%.2f", a / b }')
    printf '| %s | %.0f | %s | %s | %s | %s | %s |\n' "$label" "$rps" "$mib" "$p50" "$p99" "$errors" "$ratio"
done
echo

# --- plugin call overhead -----------------------------------------------------

if [[ ${BENCH_SKIP_PLUGIN:-0} != 1 ]]; then
    log "cargo bench -p artifactapi --bench plugin_call"
    ARTIFACTAPI_TEST_PLUGINS=${ARTIFACTAPI_TEST_PLUGINS:-$PLUGINS} \
        cargo bench -p artifactapi --bench plugin_call
fi
