#!/usr/bin/env bash
# Builds daprd from the github.com/dapr/dapr module (through the Go module
# proxy, no containers, no other downloads) and prints the binary's path.
# The binary is cached: the first build takes a few minutes, later calls
# return at once. Override the cache folder with EDGEBRIDGE_CACHE.
set -euo pipefail

version=${DAPR_VERSION:-v1.14.0}
cache=${EDGEBRIDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgebridge}
bin="$cache/daprd-$version"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
src=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/dapr/dapr@$version" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "daprd.sh: cannot download github.com/dapr/dapr@$version" >&2; exit 1; }

# The module cache is read-only; build in a writable copy.
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
cp -r "$src/." "$work/"
chmod -R u+w "$work"
echo "daprd.sh: building daprd $version (first time only, a few minutes)" >&2
(cd "$work" && CGO_ENABLED=0 go build -tags stablecomponents -trimpath -o "$bin.tmp" ./cmd/daprd)
mv "$bin.tmp" "$bin"
echo "$bin"
