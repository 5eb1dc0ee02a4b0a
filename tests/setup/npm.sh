#!/usr/bin/env bash
# Installs the npm end-to-end tools under $ARTIFACTAPI_E2E_TOOLS/node:
# verdaccio (the upstream registry the tests publish to) and pnpm (a second
# client next to the machine's npm). Idempotent: returns at once when the
# pinned versions are already installed.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="${ARTIFACTAPI_E2E_TOOLS:-$root/target/e2e-tools}"
dir="$tools/node"

for tool in node npm; do
	command -v "$tool" >/dev/null || {
		echo "tests/setup/npm.sh: $tool is not installed (need node >= 20 and npm)" >&2
		exit 1
	}
done

# verdaccio 6.8 is the last release that runs on node 20; its audit plugin
# needs node-fetch pinned, or the install fails resolving a dist-tag.
manifest='{
  "name": "artifactapi-e2e-npm-tools",
  "private": true,
  "dependencies": {
    "pnpm": "10.34.9",
    "verdaccio": "6.8.0"
  },
  "overrides": {
    "verdaccio-audit": { "node-fetch": "2.7.0" }
  }
}'

stamp="$dir/.installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$manifest" ] &&
	[ -x "$dir/node_modules/.bin/verdaccio" ] && [ -x "$dir/node_modules/.bin/pnpm" ]; then
	exit 0
fi

mkdir -p "$dir"
printf '%s\n' "$manifest" >"$dir/package.json"
rm -f "$stamp"
echo "tests/setup/npm.sh: installing verdaccio and pnpm into $dir" >&2
(cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
printf '%s' "$manifest" >"$stamp"
