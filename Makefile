# Convenience targets; ./scripts/test.sh is what CI runs.
.PHONY: test chaos chaos-short soak proto bench image

test:
	./scripts/test.sh

# The full fault matrix (>= 5,000 requests per scenario, ~15 minutes on a
# 2-core node); writes chaos-report.json for docs/RELIABILITY.md.
chaos:
	EDGEBRIDGE_CHAOS_FULL=1 EDGEBRIDGE_CHAOS_REPORT=$(CURDIR)/chaos-report.json \
		go test -race -count=1 -timeout 60m -run 'TestChaos' -v ./test/integration

# The same matrix in CI's short mode.
chaos-short:
	go test -race -count=1 -timeout 20m -run 'TestChaos' -v ./test/integration

# The days-offline soak: 1,000,000 requests while the backend is
# unreachable, the bridge and the Kafka broker killed midway, then the
# drain (about 15 minutes here). Writes docs/soak.json and docs/soak.svg
# for docs/RELIABILITY.md; CI runs the same test with 20,000.
soak:
	EDGEBRIDGE_SOAK_REQUESTS=1000000 EDGEBRIDGE_SOAK_REPORT=$(CURDIR)/docs/soak.json EDGEBRIDGE_SOAK_PLOT=$(CURDIR)/docs/soak.svg \
		go test -count=1 -timeout 2h -run 'TestSoak' -v ./test/integration

proto:
	./scripts/genproto.sh

# The container image (root Dockerfile) with podman or docker, whichever is
# installed: IMAGE=localhost/edgebridge:dev unless given, VERSION from git.
image:
	./scripts/image.sh

# The performance bench (about 10 minutes); needs mosquitto on PATH. It
# runs the binary as the image builds it (static, stripped), so the
# footprint it reports is what ships. Writes the reports and
# latency-vs-load plots that docs/PERFORMANCE.md shows: with the stores
# fsyncing as shipped (and tracing, TLS), and with -fsync=false.
bench:
	command -v mosquitto >/dev/null || apt-get install -y mosquitto
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o bin/edgebridge ./cmd/edgebridge
	bin/edgebridge bench -tracing local -tls -json docs/bench.json -plot docs/latency-vs-load.svg
	bin/edgebridge bench -fsync=false -idle -1s -json docs/bench-nofsync.json -plot docs/latency-vs-load-nofsync.svg
