#!/usr/bin/env bash
# Installs the RPM tools the rpm end-to-end test drives: dnf (the client),
# createrepo_c (the repository indexer) and rpmbuild (to build a package).
# Idempotent: does nothing when all three are on PATH.
set -euo pipefail

missing=()
command -v dnf >/dev/null 2>&1 || missing+=(dnf)
command -v createrepo_c >/dev/null 2>&1 || missing+=(createrepo-c)
command -v rpmbuild >/dev/null 2>&1 || missing+=(rpm)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "rpm.sh: need root to install ${missing[*]} with apt-get" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
