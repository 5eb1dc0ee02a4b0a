#!/usr/bin/env bash
# Benchmarks artifactapi next to nginx on loopback: cache hits of files and
# of index documents (each against nginx serving the very same bytes), the
# server's memory after that load, the first byte of a 1 GiB miss, then the
# plugin call overhead. Run through `make bench` (which builds first) or
# directly after `make build`.
#
#   BENCH_DURATION     wrk duration per run (default 10s)
#   BENCH_THREADS      wrk threads (default 2)
#   BENCH_CONNECTIONS  wrk connections (default 32)
#   BENCH_SKIP_PLUGIN  set to 1 to skip the plugin call benchmark
#   BENCH_KEEP         set to 1 to keep the temp dir (logs, configs)
#   BENCH_SKIP_HUGE    set to 1 to skip the 1 GiB miss
#   BENCH_SKIP_SHARED  set to 1 to skip the rows on PostgreSQL + Redis + S3
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
mkdir -p "$WWW/same"
head -c 4096 /dev/urandom >"$WWW/small.bin"
head -c $((1024 * 1024)) /dev/urandom >"$WWW/large.bin"
NGINX_PORT=$(free_port)
# The index documents' upstream tree, and the 1 GiB file of the miss (sparse:
# nginx sends it as fast as any other, and it takes no disk).
python3 "$ROOT/bench/documents.py" "$WWW/up" "http://127.0.0.1:$NGINX_PORT/up"
truncate -s 1G "$WWW/huge.bin"
for i in 1 2 3; do ln "$WWW/huge.bin" "$WWW/huge$i.bin"; done
chmod -R a+rX "$WWW"

# --- nginx -------------------------------------------------------------------

NGX=$WORK/nginx
mkdir -p "$NGX"
MIME_TYPES=
[[ -f /etc/nginx/mime.types ]] && MIME_TYPES="include /etc/nginx/mime.types;"
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
    $MIME_TYPES
    client_body_temp_path $NGX/body;
    proxy_temp_path $NGX/proxy;
    fastcgi_temp_path $NGX/fastcgi;
    uwsgi_temp_path $NGX/uwsgi;
    scgi_temp_path $NGX/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WWW;
        location /up/npm/ { default_type application/json; }
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
for format in pypi npm helm rpm alpine; do
    cat >>"$WORK/remotes.yaml" <<EOF
  $format:
    type: remote
    package: $format
    base_url: "http://127.0.0.1:$NGINX_PORT/up/$format"
EOF
done
log "artifactapi on 127.0.0.1:$API_PORT"
RUST_LOG=${BENCH_RUST_LOG:-info} "$BIN" serve \
    --config "$WORK/remotes.yaml" \
    --data "$WORK/data" \
    --plugins "$PLUGINS" \
    --listen "127.0.0.1:$API_PORT" >"$WORK/artifactapi.log" 2>&1 &
API_PID=$!
PIDS+=($API_PID)
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

# check_files base log: the uploads answer from files/, and mirror/ fills
# its cache from nginx and then answers hits. The fill commits once the
# body is through, so the next GET may need a moment to see it.
check_files() {
    local base=$1 logfile=$2 f ok msg
    for f in small.bin large.bin; do
        check "$base/api/v1/remote/files/$f" local "$WWW/$f" >&2 || die "local check failed (log: $logfile)"
        check "$base/api/v1/remote/mirror/$f" "" "$WWW/$f" >&2 || die "remote fill failed (log: $logfile)"
        ok=
        for _ in $(seq 1 50); do
            if msg=$(check "$base/api/v1/remote/mirror/$f" cache "$WWW/$f"); then ok=1; break; fi
            sleep 0.1
        done
        [[ -n $ok ]] || die "no cache hit: $msg (log: $logfile)"
    done
}

for f in small.bin large.bin; do
    check "http://127.0.0.1:$NGINX_PORT/$f" "" "$WWW/$f" >&2 || die "nginx check failed"
done
check_files "$API" "$WORK/artifactapi.log"
log "all GETs answer 200 with the expected x-artifact-source and bytes"

# Index documents: key|label|path|Accept|gzip. Each is fetched until it is a
# cache hit, and the bytes artifactapi answers with are written under same/
# for nginx to serve.
DOCS=(
    "pypi-html|pypi simple page, HTML|pypi/simple/demo/|text/html|"
    "pypi-html-gz|pypi simple page, HTML, gzip|pypi/simple/demo/|text/html|gzip"
    "pypi-json|pypi simple page, PEP 691 JSON|pypi/simple/demo/|application/vnd.pypi.simple.v1+json|"
    "pypi-json-gz|pypi simple page, PEP 691 JSON, gzip|pypi/simple/demo/|application/vnd.pypi.simple.v1+json|gzip"
    "npm-full|npm packument, full|npm/demo|application/json|"
    "npm-full-gz|npm packument, full, gzip|npm/demo|application/json|gzip"
    "npm-abbr|npm packument, abbreviated|npm/demo|application/vnd.npm.install-v1+json|"
    "npm-abbr-gz|npm packument, abbreviated, gzip|npm/demo|application/vnd.npm.install-v1+json|gzip"
    "helm|helm index.yaml|helm/index.yaml|*/*|"
    "helm-gz|helm index.yaml, gzip|helm/index.yaml|*/*|gzip"
    "repomd|rpm repomd.xml|rpm/repodata/repomd.xml|*/*|"
    "repomd-gz|rpm repomd.xml, gzip|rpm/repodata/repomd.xml|*/*|gzip"
    "apkindex|alpine APKINDEX.tar.gz|alpine/x86_64/APKINDEX.tar.gz|*/*|"
)
declare -A DOC_SIZE
for doc in "${DOCS[@]}"; do
    IFS='|' read -r key label path accept gzip <<<"$doc"
    args=(-H "Accept: $accept")
    [[ -z $gzip ]] || args+=(-H "Accept-Encoding: gzip")
    source=
    for _ in $(seq 1 50); do
        headers=$(curl -sS -D - -o "$WWW/same/$key" "${args[@]}" "$API/api/v1/remote/$path") ||
            die "$label: request failed (log: $WORK/artifactapi.log)"
        status=$(printf '%s\n' "$headers" | awk 'NR == 1 { print $2 }')
        [[ $status == 200 ]] || die "$label: status $status (log: $WORK/artifactapi.log)"
        source=$(printf '%s\n' "$headers" | tr -d '\r' |
            awk -F': *' 'tolower($1) == "x-artifact-source" { print $2 }')
        [[ $source == cache ]] && break
        sleep 0.1
    done
    [[ $source == cache ]] || die "$label: no cache hit"
    if [[ -n $gzip ]]; then
        printf '%s\n' "$headers" | grep -qi '^content-encoding: *gzip' || die "$label: not gzipped"
    fi
    DOC_SIZE[$key]=$(stat -c %s "$WWW/same/$key")
done
chmod -R a+rX "$WWW/same"
log "every index document is a cache hit; nginx serves the same bytes under /same/"

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
run_wrk() { # label key base-key url [wrk options...]
    local label=$1 key=$2 base=$3 url=$4 out rps transfer p50 p99 errors
    shift 4
    log "wrk $label"
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url")
    printf '%s\n' "$out" >"$WORK/wrk-$key.txt"
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    transfer=$(awk '/^Transfer\/sec:/ { print $2 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    errors=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
    [[ -n $rps ]] || die "could not parse wrk output for $label: $out"
    RPS[$key]=$rps
    ROWS+=("$label|$key|$base|$rps|$(to_mib "$transfer")|$p50|$p99|$errors")
}

for size in 4k 1m; do
    case $size in
        4k) f=small.bin name="4 KiB" ;;
        1m) f=large.bin name="1 MiB" ;;
    esac
    run_wrk "nginx, $name" "nginx-$size" "nginx-$size" "http://127.0.0.1:$NGINX_PORT/$f"
    run_wrk "artifactapi local, $name" "local-$size" "nginx-$size" "$API/api/v1/remote/files/$f"
    run_wrk "artifactapi remote cache hit, $name" "cache-$size" "nginx-$size" "$API/api/v1/remote/mirror/$f"
done
for doc in "${DOCS[@]}"; do
    IFS='|' read -r key label path accept gzip <<<"$doc"
    args=(-H "Accept: $accept")
    [[ -z $gzip ]] || args+=(-H "Accept-Encoding: gzip")
    size=$(awk -v b="${DOC_SIZE[$key]}" 'BEGIN { printf "%.0f KiB", b / 1024 }')
    run_wrk "nginx, $label ($size)" "nginx-$key" "nginx-$key" "http://127.0.0.1:$NGINX_PORT/same/$key" "${args[@]}"
    run_wrk "artifactapi, $label ($size)" "doc-$key" "nginx-$key" "$API/api/v1/remote/$path" "${args[@]}"
done

# The server's memory after the load: resident now, and its peak.
RSS=$(awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$API_PID/status")
HWM=$(awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$API_PID/status")

# A miss of a 1 GiB file: the first byte through artifactapi next to the
# first byte straight from nginx, three cold files each.
HUGE=()
if [[ ${BENCH_SKIP_HUGE:-0} != 1 ]]; then
    log "1 GiB misses"
    for i in 1 2 3; do
        direct=$(curl -sS -o /dev/null -w '%{time_starttransfer} %{time_total}' "http://127.0.0.1:$NGINX_PORT/huge$i.bin")
        proxied=$(curl -sS -o /dev/null -w '%{time_starttransfer} %{time_total}' "$API/api/v1/remote/mirror/huge$i.bin")
        HUGE+=("$i $direct $proxied")
    done
fi

# --- shared backends: PostgreSQL + Redis + S3, two replicas ------------------

FOLLOW=()
if [[ ${BENCH_SKIP_SHARED:-0} != 1 ]]; then
    kill "$API_PID" && wait "$API_PID" 2>/dev/null || true
    log "shared backends: PostgreSQL, Redis, s3s-fs"
    bash "$ROOT/tests/setup/scaleout.sh" >&2
    TOOLS=${ARTIFACTAPI_E2E_TOOLS:-$ROOT/target/e2e-tools}
    PG=$WORK/pg
    mkdir -p "$PG"
    PG_BIN=$(pg_config --bindir)
    as_pg=()
    if [[ $EUID -eq 0 ]]; then chown postgres "$PG"; as_pg=(runuser -u postgres --); fi
    PG_PORT=$(free_port)
    "${as_pg[@]}" "$PG_BIN/initdb" -D "$PG/data" --no-sync -A trust -U postgres -E UTF8 --locale=C >/dev/null
    "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG/data" -l "$PG/log" -w \
        -o "-p $PG_PORT -k $PG -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    stop_pg() { "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG/data" -m fast -w stop >/dev/null 2>&1 || true; }
    trap 'stop_pg; cleanup' EXIT
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    S3_PORT=$(free_port)
    mkdir -p "$WORK/s3/bench"
    "$TOOLS/bin/s3s-fs" --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key bench-secret "$WORK/s3" >"$WORK/s3.log" 2>&1 &
    PIDS+=($!)
    sleep 1
    truncate -s 256M "$WWW/fill256.bin"
    chmod a+r "$WWW/fill256.bin"
    REPLICAS=()
    for i in 1 2; do
        port=$(free_port)
        AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 \
        RUST_LOG=${BENCH_RUST_LOG:-info} "$BIN" serve \
            --config "$WORK/remotes.yaml" --data "$WORK/replica$i" --plugins "$PLUGINS" \
            --listen "127.0.0.1:$port" --database-url "postgres://postgres@127.0.0.1:$PG_PORT/artifacts" \
            --redis-url "redis://127.0.0.1:$REDIS_PORT" --object-store s3://bench >"$WORK/replica$i.log" 2>&1 &
        PIDS+=($!)
        REPLICAS+=("http://127.0.0.1:$port")
        wait_http "http://127.0.0.1:$port/health" "replica $i"
    done
    SHARED=${REPLICAS[0]}
    for f in small.bin large.bin; do
        curl -fsS -o /dev/null -X PUT --data-binary "@$WWW/$f" "$SHARED/api/v1/remote/files/$f" ||
            die "upload of $f to the shared backends failed (log: $WORK/replica1.log)"
    done
    check_files "$SHARED" "$WORK/replica1.log"
    for size in 4k 1m; do
        case $size in
            4k) f=small.bin name="4 KiB" ;;
            1m) f=large.bin name="1 MiB" ;;
        esac
        run_wrk "artifactapi on PostgreSQL + Redis + S3, local, $name" "shared-local-$size" "nginx-$size" "$SHARED/api/v1/remote/files/$f"
        run_wrk "artifactapi on PostgreSQL + Redis + S3, remote cache hit, $name" "shared-cache-$size" "nginx-$size" "$SHARED/api/v1/remote/mirror/$f"
    done
    # A 256 MiB miss on replica 1 while replica 2 is asked for it too: the
    # follower's first byte comes once the leader has committed the body.
    log "256 MiB fill followed on another replica"
    for i in 1 2 3; do
        cp --sparse=always "$WWW/fill256.bin" "$WWW/fill256-$i.bin"
        chmod a+r "$WWW/fill256-$i.bin"
        curl -sS -o /dev/null -w '%{time_starttransfer} %{time_total}' "${REPLICAS[0]}/api/v1/remote/mirror/fill256-$i.bin" >"$WORK/leader-$i" &
        leader=$!
        sleep 0.05
        follower=$(curl -sS -o /dev/null -w '%{time_starttransfer} %{time_total}' "${REPLICAS[1]}/api/v1/remote/mirror/fill256-$i.bin")
        wait "$leader"
        FOLLOW+=("$i $(cat "$WORK/leader-$i") $follower")
    done
fi

# The servers are done: stop them before the plugin benchmark.
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
PIDS=()
[[ ${BENCH_SKIP_SHARED:-0} == 1 ]] || stop_pg

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
    IFS='|' read -r label key base rps mib p50 p99 errors <<<"$row"
    ratio=$(awk -v a="$rps" -v b="${RPS[$base]}" 'BEGIN { printf "%.2f", a / b }')
    printf '| %s | %.0f | %s | %s | %s | %s | %s |\n' "$label" "$rps" "$mib" "$p50" "$p99" "$errors" "$ratio"
done
echo
echo "artifactapi memory after this load: ${RSS} MiB resident, ${HWM} MiB at the peak."
echo
if ((${#HUGE[@]})); then
    echo "### Miss of a 1 GiB file: first byte to the client"
    echo
    echo "| file | nginx first byte | through artifactapi | difference | artifactapi total |"
    echo "|---|---:|---:|---:|---:|"
    for row in "${HUGE[@]}"; do
        read -r i d_first d_total p_first p_total <<<"$row"
        awk -v i="$i" -v d="$d_first" -v p="$p_first" -v t="$p_total" 'BEGIN {
            printf "| huge%s.bin | %.1f ms | %.1f ms | %+.1f ms | %.2f s |\n", i, d * 1000, p * 1000, (p - d) * 1000, t }'
    done
    echo
fi

if ((${#FOLLOW[@]})); then
    echo "### A 256 MiB miss on one replica, asked for on another at once (shared backends)"
    echo
    echo "| run | leader first byte | leader total | follower first byte | follower total |"
    echo "|---|---:|---:|---:|---:|"
    for row in "${FOLLOW[@]}"; do
        read -r i l_first l_total f_first f_total <<<"$row"
        awk -v i="$i" -v a="$l_first" -v b="$l_total" -v c="$f_first" -v d="$f_total" 'BEGIN {
            printf "| %s | %.1f ms | %.2f s | %.0f ms | %.2f s |\n", i, a * 1000, b, c * 1000, d }'
    done
    echo
fi

# --- plugin call overhead -----------------------------------------------------

if [[ ${BENCH_SKIP_PLUGIN:-0} != 1 ]]; then
    log "cargo bench -p artifactapi --bench plugin_call"
    ARTIFACTAPI_TEST_PLUGINS=${ARTIFACTAPI_TEST_PLUGINS:-$PLUGINS} \
        cargo bench -p artifactapi --bench plugin_call
fi
