#!/usr/bin/env bash
# Installs the Helm client the helm end-to-end test drives: a Python venv
# under $ARTIFACTAPI_E2E_TOOLS/helm with helm-python-sdk, which bundles Helm
# as a library (no helm binary is packaged for these machines).
# Idempotent: does nothing when the venv already has this version.
set -euo pipefail

tools="${ARTIFACTAPI_E2E_TOOLS:-$(cd "$(dirname "$0")/../.." && pwd)/target/e2e-tools}"
venv="$tools/helm"
version="0.2.2"
check="import helm_python, sys; sys.exit(helm_python.__version__ != '$version')"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    exit 0
fi

# The machine's global pip settings (a local wheel folder, ...) must not
# decide what gets installed.
for name in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do
    unset "$name"
done

mkdir -p "$tools"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "helm-python-sdk==$version"
"$venv/bin/python" -c "$check"
