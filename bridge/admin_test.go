package bridge_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/config"
)

// serveAdmin runs the admin server of a bridge built from cfg (New does no
// I/O) and returns a GET helper: status and body.
func serveAdmin(t *testing.T, pprof bool) func(path string) (int, string) {
	t.Helper()
	cfg := config.Default()
	cfg.Kafka.DataDir = t.TempDir() // the bridge keeps its group member id there
	cfg.ApplyDefaults()
	cfg.MQTT.Broker = "tcp://127.0.0.1:1"
	cfg.Kafka.Brokers = []string{"127.0.0.1:1"}
	cfg.Admin.Pprof = pprof
	b, err := bridge.New(cfg, bridge.WithBuildInfo(bridge.BuildInfo{Version: "v9.9.9", Revision: "abc123", GoVersion: "go1.26"}))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.ServeAdmin(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return func(path string) (int, string) {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
}

// /metrics carries the Go runtime and process collectors (the bench reads
// go_goroutines); /debug/pprof/ is served only with admin.pprof.
func TestAdminMetricsAndPprof(t *testing.T) {
	get := serveAdmin(t, false)
	code, body := get("/metrics")
	for _, want := range []string{"\ngo_goroutines ", "\nprocess_resident_memory_bytes ", "\nedgebridge_mqtt_messages_received_total ",
		"\nedgebridge_build_info{goversion=\"go1.26\",revision=\"abc123\",version=\"v9.9.9\"} 1\n"} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %q", code, strings.TrimSpace(want))
		}
	}
	if code, _ := get("/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("pprof off: /debug/pprof/ answered %d, want 404", code)
	}

	get = serveAdmin(t, true)
	if code, body := get("/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("pprof on: /debug/pprof/ answered %d", code)
	}
	if code, body := get("/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "ServeAdmin") {
		t.Errorf("pprof on: goroutine profile answered %d", code)
	}
}
