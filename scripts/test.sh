#!/usr/bin/env bash
# The project's test command (README). Installs what it needs on a fresh
# Debian machine, then runs every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step is stamped with the time since the start (the test command's
# time is reported at the end).
step() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

need_apt=()
command -v mosquitto >/dev/null || need_apt+=(mosquitto mosquitto-clients)
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# The image, compose and kube play tests (test/deploy).
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
command -v podman-compose >/dev/null || need_apt+=(podman-compose)
[ -r /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
# The Python example backend (examples/python-backend) and its stubs.
/usr/bin/python3 -c 'import grpc' 2>/dev/null || need_apt+=(python3-grpcio)
command -v grpc_python_plugin >/dev/null || need_apt+=(protobuf-compiler-grpc)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# promtool and prometheus for the alert rules and dashboard tests; without
# its recommends (exporters that would start as services).
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  step "apt-get install prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi

step "go mod download"
go mod download

step "daprd (built from github.com/dapr/dapr, cached)"
EDGEBRIDGE_DAPRD=$(./scripts/daprd.sh)
export EDGEBRIDGE_DAPRD

step "OpenTelemetry Collector (built from its Go modules, cached)"
EDGEBRIDGE_OTELCOL=$(./scripts/otelcol.sh)
export EDGEBRIDGE_OTELCOL
echo "$EDGEBRIDGE_DAPRD"

step "kustomize (go install, cached)"
KUSTOMIZE_VERSION=v5.8.1 # v5.8.3 needs Go 1.27
GOBIN_DIR=$(go env GOPATH)/bin
if ! "$GOBIN_DIR/kustomize" version 2>/dev/null | grep -q "$KUSTOMIZE_VERSION"; then
  go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi
export PATH="$GOBIN_DIR:$PATH"
kustomize version

# podman in this VM needs runc and no default ulimits (DESIGN.md).
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
[ -z "$unformatted" ] || { echo "gofmt needed:"; echo "$unformatted"; exit 1; }

step "go vet"
go vet ./...

step "go mod tidy leaves no diff"
cp go.mod /tmp/edgebridge-go.mod.bak; cp go.sum /tmp/edgebridge-go.sum.bak
go mod tidy
if ! git diff --quiet -- go.mod go.sum; then
  git diff -- go.mod go.sum | head -40
  cp /tmp/edgebridge-go.mod.bak go.mod; cp /tmp/edgebridge-go.sum.bak go.sum
  echo "go.mod/go.sum are not tidy"; exit 1
fi

step "protobuf regeneration leaves no diff"
./scripts/genproto.sh
if ! git diff --quiet -- api examples || [ -n "$(git status --porcelain -- api examples)" ]; then
  git status --short -- api examples
  echo "generated protobuf code is stale: run ./scripts/genproto.sh and commit"; exit 1
fi

step "config docs regeneration leaves no diff (config/fielddoc_gen.go, docs/CONFIGURATION.md)"
./scripts/genconfig.sh
if ! git diff --quiet -- config docs || [ -n "$(git status --porcelain -- config/fielddoc_gen.go docs/CONFIGURATION.md)" ]; then
  git status --short -- config docs
  echo "generated config docs are stale: run ./scripts/genconfig.sh and commit"; exit 1
fi

step "tests of the patched brokers (third_party/mochi, third_party/kfake: their own modules)"
# The tests of what the patches change and the packages edgebridge uses;
# upstream's publishToClient tests sleep 100 µs for a write and fail on a
# loaded machine.
(cd third_party/mochi && go test -race -count=1 -run 'Edgebridge|IDInUse|ExceedClientWritesPending|ProcessPacketPublish|ProcessPacketSubscribe|ProcessPacketUnsubscribe|Inflight' . &&
  go test -race -count=1 ./hooks/... ./packets/... &&
  go test -race -count=1 -run Edgebridge ./listeners)
(cd third_party/kfake && go test -count=1 -run 'Persist|Crash|Replay|Restart|Edgebridge' .)

step "go test -race -shuffle=on ./..."
go test -race -shuffle=on -count=1 -timeout 20m ./...

if [ "${EDGEBRIDGE_SKIP_CONTAINERS:-}" != 1 ]; then
  step "image size (test/deploy built it with scripts/image.sh)"
  podman image inspect localhost/edgebridge:ci --format '{{.Size}}' | awk '{printf "localhost/edgebridge:ci: %.1f MB\n", $1/1e6}'
fi

step "benchmarks run (one iteration each; figures come from -benchtime runs and edgebridge bench)"
go test -run '^$' -bench . -benchtime 1x ./transcoder ./ackwindow ./grpcout ./kafkapipe ./bridge ./settle >/dev/null

step "allocations per message on the hot path (without -race: its sync.Pool drops items at random)"
go test -count=1 -run 'Allocs$' ./bridge ./ackwindow

step "fuzz the transcoder and the whole ingest decision (short)"
# Execution counts (about 15 s each here), not durations: a -fuzztime
# duration can end in a spurious "context deadline exceeded" (golang/go#75804,
# not fixed in Go 1.26).
go test -run '^$' -fuzz FuzzDecode -fuzztime 150000x -fuzzminimizetime 100x ./transcoder
go test -run '^$' -fuzz FuzzAdmit -fuzztime 60000x -fuzzminimizetime 100x ./bridge

step "demo (small)"
go run ./cmd/edgebridge demo -devices 10 -requests 20 -timeout 2m

printf '\n==> all checks passed in %dm%02ds\n' $((SECONDS / 60)) $((SECONDS % 60))
