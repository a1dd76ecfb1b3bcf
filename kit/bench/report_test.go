package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestLatencyOf(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := latencyOf(d)
	want := Latency{P50: 50, P90: 90, P99: 99, Max: 100}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if d[0] != 100*time.Millisecond {
		t.Fatal("latencyOf sorted its input")
	}
	if (latencyOf(nil) != Latency{}) {
		t.Fatal("no samples should give zeros")
	}
}

func TestMergeSumsRounds(t *testing.T) {
	r1 := Scenario{Name: "pipeline", Messages: 100, Seconds: 1, Lost: 1, replies: 100, BridgeRSSMax: 10, BridgeGoroutinesMax: 50,
		lat: []time.Duration{time.Millisecond}, cpuUsed: map[string]time.Duration{"bridge": 50 * time.Millisecond}}
	r2 := Scenario{Name: "pipeline", Messages: 300, Seconds: 1, replies: 300, BridgeRSSMax: 20, BridgeGoroutinesMax: 40,
		lat: []time.Duration{3 * time.Millisecond}, cpuUsed: map[string]time.Duration{"bridge": 150 * time.Millisecond}}
	m := merge([]Scenario{r1, r2})
	if m.Messages != 400 || m.Seconds != 2 || m.Throughput != 200 || m.Lost != 1 {
		t.Fatalf("merged %+v", m)
	}
	if m.BridgeRSSMax != 20 || m.BridgeGoroutinesMax != 50 || m.Latency.Max != 3 {
		t.Fatalf("merged maxima %+v", m)
	}
	if m.CPU["bridge"] != 500 { // 200 ms of CPU for 400 replies
		t.Fatalf("cpu per 1k: %v", m.CPU)
	}
}

// The targets are the goals; the ones a run did not measure are
// left out, and the latency goals follow the stores' durability.
func TestTargets(t *testing.T) {
	r := &Report{
		ThroughputVsMQTT: 0.92, SiteRateLatency: Latency{P99: 8}, ClosedLoopLatency: Latency{P99: 12}, BridgeRSSMax: 40 << 20,
		Setup: Setup{Durability: "fsync"},
		Scenarios: []Scenario{
			{Name: "pipeline", Throughput: 1000, CPU: map[string]float64{"bridge": 100, "mosquitto": 90, "kafka": 50}},
			{Name: "pipeline at a site's rate", CPU: map[string]float64{"bridge": 280, "kafka": 310}},
			{Name: "pipeline traced 0.01", Throughput: 980, CPU: map[string]float64{"bridge": 102}},
			{Name: "pipeline traced 1", Throughput: 800, CPU: map[string]float64{"bridge": 110}},
		},
		Footprint: Footprint{BinaryBytes: 25 << 20, ReadyMillis: 70, IdleRSSBytes: 19 << 20},
	}
	check := func(r *Report, want map[string]bool) {
		t.Helper()
		got := map[string]Target{}
		for _, tg := range targets(r) {
			got[tg.Name] = tg
		}
		if len(got) != len(want) {
			t.Errorf("got %d targets, want %d: %+v", len(got), len(want), got)
		}
		for name, met := range want {
			tg, ok := got[name]
			if !ok {
				t.Errorf("no target %q in %+v", name, got)
			} else if tg.Met != met {
				t.Errorf("%q: met %v, want %v (%+v)", name, tg.Met, met, tg)
			}
		}
	}
	check(r, map[string]bool{
		"throughput vs the raw MQTT round trip":           true,
		"p99 latency at a site's rate (open loop), ms":    true,  // 8 <= 10 with fsync
		"bridge CPU at a site's rate, ms per 1k":          true,  // 280
		"Kafka broker CPU at a site's rate, ms per 1k":    false, // 310
		"bridge CPU per message / Mosquitto's, full load": false, // 100 / 90
		"bridge peak RSS, MB":                             true,
		"idle RSS of the node as shipped, MB":             true,
		"exec to ready, empty data dir, ms":               true,
		"binary, MB":                                      false, // 25
		"tracing 0.01: throughput lost, %":                true,  // 2 %
		"tracing 0.01: bridge CPU per message added, %":   true,  // 2 %
		"tracing 1: throughput lost, %":                   false, // 20 %
		"tracing 1: bridge CPU per message added, %":      true,  // 10 %
		"lost messages":                                   true,
	})

	// Page cache only: p99 <= 5 at a site's rate, and the closed loop's
	// p99 <= 10 becomes a goal; a run without the footprint or traced
	// scenarios has no targets for them.
	r = &Report{SiteRateLatency: Latency{P99: 8}, ClosedLoopLatency: Latency{P99: 9}, Setup: Setup{Durability: "no fsync"}, Lost: 1}
	check(r, map[string]bool{
		"throughput vs the raw MQTT round trip":        false,
		"p99 latency at a site's rate (open loop), ms": false, // 8 > 5
		"p99 latency closed loop N x 1 (queueing), ms": true,
		"bridge peak RSS, MB":                          false, // not measured
		"lost messages":                                false,
	})
}

func TestWritePlotAndTable(t *testing.T) {
	r := &Report{
		Throughput: 9000, BaselineMQTT: 17000, Latency: Latency{P50: 20, P90: 30, P99: 40},
		Curve: []Scenario{
			{Name: "pipeline open loop", OfferedRate: 3000, Throughput: 2990, Latency: Latency{P50: 3, P90: 5, P99: 8}},
			{Name: "pipeline open loop", OfferedRate: 6000, Throughput: 5990, Latency: Latency{P50: 5, P90: 9, P99: 15}},
		},
		Scenarios: []Scenario{{Name: "pipeline", Devices: 50, Outstanding: 4, Messages: 9000, Throughput: 9000, BridgeRSSMax: 30 << 20,
			CPU: map[string]float64{"bridge": 60}}},
		Setup: Setup{Devices: 50, PayloadSize: 1024, Durability: "no fsync"},
	}
	r.Targets = targets(r)
	var svg bytes.Buffer
	if err := r.WritePlot(&svg); err != nil {
		t.Fatal(err)
	}
	if strings.Count(svg.String(), "<polyline") != 3 || !strings.Contains(svg.String(), "raw MQTT 17000 msg/s") ||
		!strings.Contains(svg.String(), "QoS 1, no fsync)") {
		t.Fatalf("plot:\n%s", svg.String())
	}
	var table bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"pipeline open loop @3000/s", "30.0", "NOT MET", "(no fsync)"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, 0.7: 1, 3: 5, 12: 20, 47: 50, 51: 100, 18000: 20000} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", in, got, want)
		}
	}
}

// The report says how durable the stores were: the embedded broker and the
// ledger follow -fsync; an external Kafka keeps its own settings.
func TestSetupDurability(t *testing.T) {
	for _, c := range []struct {
		kafka   string
		noFsync bool
		want    string
	}{
		{"embedded", false, "fsync"},
		{"embedded", true, "no fsync"},
		{"10.0.0.1:9092", false, "kafka: the broker's own; ledger: fsync"},
		{"10.0.0.1:9092", true, "kafka: the broker's own; ledger: no fsync"},
	} {
		if got := setupOf(Config{Kafka: c.kafka, NoFsync: c.noFsync}).Durability; got != c.want {
			t.Errorf("kafka %s, no fsync %v: got %q, want %q", c.kafka, c.noFsync, got, c.want)
		}
	}
}
