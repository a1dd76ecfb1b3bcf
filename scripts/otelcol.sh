#!/usr/bin/env bash
# Builds a minimal OpenTelemetry Collector (OTLP receiver; OTLP and nop
# exporters) from its core Go modules (through the Go module proxy, no
# containers) and prints the binary's path: the trace pipeline of the
# tracing tests, which receive what it forwards, and the sink of
# `edgebridge bench -tracing`. (The contrib file exporter needs modules the
# Go proxy here does not serve.) The
# binary is cached: the first build takes a few minutes, later calls return
# at once. Override the cache folder with EDGEBRIDGE_CACHE.
set -euo pipefail

core=${OTELCOL_VERSION:-v0.165.0}
cache=${EDGEBRIDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgebridge}
# The script's own hash names the binary: changing the components rebuilds.
bin="$cache/otelcol-$core-$(sha256sum "$0" | cut -c1-12)"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/main.go" <<'GO'
// Command otelcol is an OpenTelemetry Collector with the OTLP receiver and
// the OTLP and nop exporters only: what edgebridge's tracing tests and
// bench need.
package main

import (
	"log"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/nopexporter"
	"go.opentelemetry.io/collector/exporter/otlpexporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

func components() (otelcol.Factories, error) {
	f := otelcol.Factories{Telemetry: otelconftelemetry.NewFactory()}
	var err error
	if f.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory()); err != nil {
		return f, err
	}
	f.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](otlpexporter.NewFactory(), nopexporter.NewFactory())
	return f, err
}

func main() {
	set := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{Command: "otelcol", Description: "OTLP in, OTLP out", Version: "edgebridge-test"},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{ProviderFactories: []confmap.ProviderFactory{fileprovider.NewFactory()}, DefaultScheme: "file"},
		},
	}
	if err := otelcol.NewCommand(set).Execute(); err != nil {
		log.Fatal(err)
	}
}
GO
cd "$work"
go mod init edgebridge.local/otelcol >/dev/null 2>&1
echo "otelcol.sh: building an OpenTelemetry Collector $core (first time only, a few minutes)" >&2
GOFLAGS=-mod=mod go get "go.opentelemetry.io/collector/otelcol@$core" "go.opentelemetry.io/collector/receiver/otlpreceiver@$core" \
  "go.opentelemetry.io/collector/exporter/otlpexporter@$core" "go.opentelemetry.io/collector/exporter/nopexporter@$core" >&2
GOFLAGS=-mod=mod go mod tidy >&2
CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" .
mv "$bin.tmp" "$bin"
echo "$bin"
