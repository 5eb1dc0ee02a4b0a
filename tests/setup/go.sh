#!/usr/bin/env bash
# Installs the Go toolchain the goproxy end-to-end test drives (Debian's
# golang-go). Idempotent: does nothing when `go` is on PATH.
set -euo pipefail

command -v go >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "go.sh: need root to install golang-go with apt-get" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends golang-go
