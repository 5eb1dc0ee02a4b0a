#!/usr/bin/env bash
# Installs the shared backends the scale-out tests start on loopback:
# PostgreSQL 15 (Debian's postgresql-15; its binaries stay off PATH and are
# found through pg_config), redis-server, nginx (the round-robin balancer in
# front of the replicas) and s3s-fs (an S3 server over a folder).
# s3s-fs takes minutes to build, so it is built once per machine under a
# stable cache folder and linked into $ARTIFACTAPI_E2E_TOOLS/bin.
# Idempotent: does nothing when everything is in place.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="${ARTIFACTAPI_E2E_TOOLS:-$root/target/e2e-tools}"
s3s_version="0.14.1"
cache="${ARTIFACTAPI_TOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/artifactapi}/s3s-fs-$s3s_version"

missing=()
command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] || missing+=(postgresql-15)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scaleout.sh: need root to install ${missing[*]} with apt-get" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # The packages start system services; the tests run their own.
    systemctl disable --now redis-server postgresql nginx >/dev/null 2>&1 || true
fi

if [ ! -x "$cache/bin/s3s-fs" ]; then
    echo "scaleout.sh: building s3s-fs $s3s_version into $cache (once per machine)" >&2
    mkdir -p "$cache"
    cargo install --quiet "s3s-fs@$s3s_version" --features binary --locked --root "$cache"
fi
mkdir -p "$tools/bin"
ln -sfn "$cache/bin/s3s-fs" "$tools/bin/s3s-fs"
