#!/usr/bin/env bash
# Regenerates the committed Go code from api/**/*.proto with pinned tool versions.
# protoc comes from Debian bookworm's protobuf-compiler (3.21.12); the Go plugins
# are pinned here and run through the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_WANT="libprotoc 3.21.12"
PROTOC_GEN_GO=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1

if ! command -v protoc >/dev/null; then
  apt-get install -y -qq protobuf-compiler >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null; }
fi
got=$(protoc --version)
[ "$got" = "$PROTOC_WANT" ] || { echo "genproto: want $PROTOC_WANT, got $got" >&2; exit 1; }

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN="$bin" go install "$PROTOC_GEN_GO"
GOBIN="$bin" go install "$PROTOC_GEN_GO_GRPC"

protoc -I api \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" --go_out=api --go_opt=paths=source_relative \
  --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" --go-grpc_out=api --go-grpc_opt=paths=source_relative \
  $(cd api && find . -name '*.proto' | sed 's|^./||' | sort)

# The Python stubs of the example backend (examples/python-backend), from
# Debian's protobuf-compiler-grpc (grpc_python_plugin 1.51.1).
if ! command -v grpc_python_plugin >/dev/null; then
  apt-get install -y -qq protobuf-compiler-grpc >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler-grpc >/dev/null; }
fi
mkdir -p examples/python-backend/gen
protoc -I api \
  --python_out=examples/python-backend/gen \
  --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" --grpc_python_out=examples/python-backend/gen \
  edgebridge/v1/edgebridge.proto
