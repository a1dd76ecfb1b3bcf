# Convenience targets; ./scripts/test.sh is what CI runs.
.PHONY: test chaos chaos-short proto bench image

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

proto:
	./scripts/genproto.sh

# The container image (root Dockerfile) with podman or docker, whichever is
# installed: IMAGE=localhost/edgebridge:dev unless given, VERSION from git.
image:
	./scripts/image.sh

# The performance bench (about 6 minutes); needs mosquitto on PATH. Writes
# the reports and latency-vs-load plots that docs/PERFORMANCE.md shows: with
# the stores fsyncing as shipped, and with -fsync=false.
bench:
	command -v mosquitto >/dev/null || apt-get install -y mosquitto
	go run ./cmd/edgebridge bench -json docs/bench.json -plot docs/latency-vs-load.svg
	go run ./cmd/edgebridge bench -fsync=false -json docs/bench-nofsync.json -plot docs/latency-vs-load-nofsync.svg
