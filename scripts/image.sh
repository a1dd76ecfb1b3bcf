#!/usr/bin/env bash
# Builds the edgebridge image (make image): static binaries of edgebridge and
# paymentd into build/image/, then the root Dockerfile with docker or podman,
# whichever is installed (ENGINE=podman|docker to choose).
#   IMAGE    the tag to build      (default: localhost/edgebridge:dev)
#   VERSION  the version to stamp  (default: git describe, else dev)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/edgebridge:dev}
ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
command -v "$ENGINE" >/dev/null || { echo "image: neither podman nor docker is installed" >&2; exit 1; }
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$REVISION" != unknown ] && ! git diff --quiet HEAD 2>/dev/null; then REVISION+=-dirty; fi
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

CA=/etc/ssl/certs/ca-certificates.crt
[ -r "$CA" ] || { echo "image: $CA missing (apt-get install ca-certificates)" >&2; exit 1; }

out=build/image
rm -rf "$out" && mkdir -p "$out/data"
cp "$CA" "$out/ca-certificates.crt"
ldflags="-s -w -X main.version=$VERSION -X main.revision=$REVISION -X main.buildTime=$CREATED"
for cmd in edgebridge paymentd; do
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$cmd" "./cmd/$cmd"
done

"$ENGINE" build -q -f Dockerfile -t "$IMAGE" \
  --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg CREATED="$CREATED" . >/dev/null
echo "$IMAGE"
