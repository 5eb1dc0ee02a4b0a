#!/usr/bin/env bash
# Installs the OCI tools the oci_clients end-to-end test drives: skopeo (push,
# pull, copy, delete), umoci (builds the test image offline), podman (pull,
# tag, push with vfs storage), the CNCF registry (docker-registry, an
# upstream to proxy) and htpasswd (its bcrypt password file).
# Idempotent: does nothing when all five are on PATH.
set -euo pipefail

missing=()
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v umoci >/dev/null 2>&1 || missing+=(umoci)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "oci.sh: need root to install ${missing[*]} with apt-get" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
