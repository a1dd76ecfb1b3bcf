package integration

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchCommand runs `edgebridge bench` briefly against a real Mosquitto
// (from PATH), the embedded Kafka broker as a process and paymentd, and
// checks what it reports: every scenario measured something, nothing was
// lost, the bridge's figures come from its process, the JSON has the keys
// the issue fixes, the plot is an SVG with a line per percentile, and
// -profile saves the bridge's profiles.
// The figures themselves are not asserted: this binary has the race
// detector on, and speed is the bench's business, not a test's.
func TestBenchCommand(t *testing.T) {
	dir := t.TempDir()
	jsonPath, plotPath := filepath.Join(dir, "bench.json"), filepath.Join(dir, "plot.svg")
	cmd := exec.Command(bins.edgebridge, "bench", "-duration", "1s", "-rounds", "1", "-devices", "10", "-closed-loop", "5",
		"-curve", "2", "-idle", "1s", "-tracing", "local", "-json", jsonPath, "-plot", plotPath, "-profile", filepath.Join(dir, "prof"), "-q")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	for _, want := range []string{"mqtt raw", "responders", "pipeline", "kafka raw", "grpc echo", "pipeline as shipped", "pipeline traced 1", "pipeline traced 0.01",
		"pipeline closed loop 5 x 1", "pipeline at a site's rate", "pipeline open loop", "the node as shipped", "tracing 0.01: throughput lost", "targets:"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}

	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"throughput_msgs_per_sec", "baseline_mqtt_msgs_per_sec", "latency_ms", "closed_loop_latency_ms", "site_rate_latency_ms", "lost", "bridge_rss_max_bytes"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	var rep struct {
		Throughput   float64                    `json:"throughput_msgs_per_sec"`
		BaselineMQTT float64                    `json:"baseline_mqtt_msgs_per_sec"`
		Latency      struct{ P50, P99 float64 } `json:"latency_ms"`
		Lost         int                        `json:"lost"`
		RSS          int64                      `json:"bridge_rss_max_bytes"`
		CPU          float64                    `json:"bridge_cpu_ms_per_1k_msgs"`
		Goroutines   int                        `json:"bridge_goroutines_max"`
		Setup        struct {
			Durability string `json:"durability"`
		} `json:"setup"`
		Scenarios []struct {
			Name     string `json:"name"`
			Messages int    `json:"messages"`
			Lost     int    `json:"lost"`
			Stages   []struct {
				Name    string  `json:"name"`
				Count   float64 `json:"count"`
				P99UpTo float64 `json:"p99_up_to_ms"`
			} `json:"stages"`
		} `json:"scenarios"`
		Curve []struct {
			Offered  float64 `json:"offered_msgs_per_sec"`
			Messages int     `json:"messages"`
		} `json:"load_curve"`
		Responders []struct {
			Responders int     `json:"responders"`
			Throughput float64 `json:"msgs_per_sec"`
		} `json:"raw_responders"`
		Footprint struct {
			Binary     int64     `json:"binary_bytes"`
			Ready      float64   `json:"ready_ms"`
			ReadyRuns  []float64 `json:"ready_runs_ms"`
			RSS        int64     `json:"idle_rss_bytes"`
			Anon       int64     `json:"idle_anon_bytes"`
			Goroutines int       `json:"idle_goroutines"`
		} `json:"footprint"`
		Spans      int64   `json:"spans_received"`
		Shipped    float64 `json:"shipped_msgs_per_sec"`
		ShippedRSS int64   `json:"shipped_rss_max_bytes"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Lost != 0 {
		t.Errorf("lost %d", rep.Lost)
	}
	if rep.Setup.Durability != "fsync" {
		t.Errorf("setup.durability %q, want the shipped default \"fsync\"", rep.Setup.Durability)
	}
	if rep.Throughput <= 0 || rep.BaselineMQTT <= 0 || rep.Latency.P50 <= 0 || rep.Latency.P99 < rep.Latency.P50 {
		t.Errorf("throughput %.0f, baseline %.0f, latency %+v", rep.Throughput, rep.BaselineMQTT, rep.Latency)
	}
	if rep.RSS < 1<<20 || rep.CPU <= 0 || rep.Goroutines <= 0 {
		t.Errorf("bridge figures not measured: rss %d, cpu %.1f ms/1k, goroutines %d", rep.RSS, rep.CPU, rep.Goroutines)
	}
	// The 4 in rounds, as shipped, 2 traced, the closed loop N x 1, a
	// site's rate in the separate layout and as shipped.
	if len(rep.Scenarios) != 10 {
		t.Errorf("got %d scenarios, want 10", len(rep.Scenarios))
	}
	if rep.Shipped <= 0 || rep.ShippedRSS < 1<<20 {
		t.Errorf("the node as shipped not measured: %.0f msg/s, peak RSS %d", rep.Shipped, rep.ShippedRSS)
	}
	// The raw round trip added responders until one more did not help.
	if n := len(rep.Responders); n < 2 || rep.Responders[0].Responders != 1 || rep.Responders[n-1].Responders != n || rep.Responders[0].Throughput <= 0 {
		t.Errorf("raw responders %+v", rep.Responders)
	}
	if f := rep.Footprint; f.Binary < 1<<20 || f.Ready <= 0 || len(f.ReadyRuns) != 5 || f.RSS < 1<<20 || f.Anon < 1<<20 || f.Anon > f.RSS || f.Goroutines <= 0 {
		t.Errorf("footprint not measured: %+v", f)
	}
	if rep.Spans == 0 {
		t.Error("-tracing local received no spans")
	}
	siteRates := 0
	for _, s := range rep.Scenarios {
		if s.Messages == 0 || s.Lost != 0 {
			t.Errorf("scenario %s: %d messages, %d lost", s.Name, s.Messages, s.Lost)
		}
		if !strings.Contains(s.Name, "at a site's rate") {
			continue
		}
		// Its legs, from the bridge's histograms: produce, delivery, end to end.
		siteRates++
		if len(s.Stages) != 3 {
			t.Errorf("scenario %s: stages %+v, want produce, delivery and end to end", s.Name, s.Stages)
		}
		for _, st := range s.Stages {
			if st.Count <= 0 || st.P99UpTo == 0 {
				t.Errorf("scenario %s: stage %+v", s.Name, st)
			}
		}
	}
	if siteRates != 2 {
		t.Errorf("%d site-rate scenarios, want 2 (as shipped and the separate layout)", siteRates)
	}
	if len(rep.Curve) != 2 || rep.Curve[0].Offered <= 0 || rep.Curve[1].Offered <= rep.Curve[0].Offered || rep.Curve[0].Messages == 0 {
		t.Errorf("load curve %+v", rep.Curve)
	}

	// -profile: the bridge's CPU and allocation profiles and the bench's own
	// CPU profile, gzipped pprof, and the bridge's execution trace; of the
	// first pipeline round, the node as shipped and the site-rate runs.
	for _, prefix := range []string{"", "shipped-", "rate-", "shipped-rate-"} {
		for _, f := range []string{"cpu.pprof", "allocs.pprof", "bench-cpu.pprof"} {
			b, err := os.ReadFile(filepath.Join(dir, "prof", prefix+f))
			if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
				t.Errorf("profile %s: %d bytes, %v", prefix+f, len(b), err)
			}
		}
		if b, err := os.ReadFile(filepath.Join(dir, "prof", prefix+"trace.out")); err != nil || !bytes.HasPrefix(b, []byte("go 1.")) {
			t.Errorf("trace %s: %.20q, %v", prefix+"trace.out", b, err)
		}
	}

	svg, err := os.ReadFile(plotPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		XMLName   xml.Name `xml:"svg"`
		Polylines []struct {
			Points string `xml:"points,attr"`
		} `xml:"polyline"`
	}
	if err := xml.Unmarshal(svg, &doc); err != nil {
		t.Fatalf("plot is not well-formed SVG: %v", err)
	}
	if len(doc.Polylines) != 3 {
		t.Fatalf("plot has %d lines, want p50, p90, p99", len(doc.Polylines))
	}
	for _, l := range doc.Polylines {
		if n := len(strings.Fields(l.Points)); n != 3 { // 2 open-loop steps + the full-load point
			t.Errorf("a line has %d points, want 3", n)
		}
	}
}
