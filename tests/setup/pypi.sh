#!/usr/bin/env bash
# Installs what the pypi end-to-end test drives, in a Python venv under
# $ARTIFACTAPI_E2E_TOOLS/pypi: pypiserver (the upstream index), uv (a client
# besides the venv's own pip) and the tools that build the test packages
# offline (setuptools, wheel, build).
# Idempotent: does nothing when the venv already has these versions.
set -euo pipefail

tools="${ARTIFACTAPI_E2E_TOOLS:-$(cd "$(dirname "$0")/../.." && pwd)/target/e2e-tools}"
venv="$tools/pypi"
requirements=(
    "pypiserver==2.4.2"
    "uv==0.13.8"
    "setuptools==84.2.1"
    "wheel==0.48.0"
    "build==1.6.1"
)
stamp="$venv/.installed"
want="${requirements[*]}"

if [ -x "$venv/bin/pypi-server" ] && [ -x "$venv/bin/uv" ] && [ -f "$stamp" ] \
    && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

# The machine's global pip settings (a local wheel folder, ...) must not
# decide what gets installed; the certificate setting is kept.
while IFS= read -r name; do
    [ "$name" = PIP_CERT ] || unset "$name"
done < <(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p')

mkdir -p "$tools"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
"$venv/bin/pypi-server" --version >/dev/null
"$venv/bin/uv" --version >/dev/null
echo "$want" >"$stamp"
