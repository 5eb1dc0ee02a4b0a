#!/usr/bin/env bash
# Installs the Puppet client the puppet end-to-end test drives (Debian's
# puppet, for `puppet module install`). Idempotent: does nothing when
# `puppet` is on PATH.
set -euo pipefail

command -v puppet >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "puppet.sh: need root to install puppet with apt-get" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends puppet
