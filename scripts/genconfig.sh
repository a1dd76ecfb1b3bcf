#!/usr/bin/env bash
# Regenerates what is generated from config/config.go: the doc comments
# `edgebridge config defaults` prints (config/fielddoc_gen.go) and
# docs/CONFIGURATION.md. CI fails when this leaves a diff.
set -euo pipefail
cd "$(dirname "$0")/.."
go run ./config/gendoc config/config.go config/fielddoc_gen.go
go run ./cmd/edgebridge config defaults -markdown > docs/CONFIGURATION.md
