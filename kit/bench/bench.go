// Package bench measures the whole edgebridge pipeline against its raw
// parts in one run, on the same machine at the same time:
//
//	pipeline    device -MQTT-> broker -> edgebridge -> Kafka -> edgebridge -gRPC-> paymentd
//	            -> edgebridge -MQTT-> broker -> device; publish -> reply at the device
//	mqtt raw    the same devices, payload, QoS and outstanding limit through the same
//	            broker, answered by a client that replies at once (the broker crossed twice)
//	kafka raw   kafka-go produce -> consume with the bridge's producer settings
//	grpc echo   the bridge's bidi stream protocol against a server that ACKs at once
//
// The baselines and the pipeline alternate in rounds, so a machine that
// gets slower or faster during the run affects both. The bridge runs as its
// own process (`edgebridge run`), so its CPU time, peak RSS and goroutines
// are its own; the embedded Kafka broker does too.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgebridge/edgebridge/ackwindow"
	"github.com/edgebridge/edgebridge/internal/defaults"
	"github.com/edgebridge/edgebridge/kit/devicesim"
)

// Config configures a run. Zero values mean the default.
type Config struct {
	// Bridge is the edgebridge binary to run. Required.
	Bridge string
	// MQTT is "mosquitto" (from PATH, with deploy/mosquitto/mosquitto.conf),
	// "embedded" (the in-process broker) or tcp://host:port. Default: mosquitto.
	MQTT string
	// Kafka is "embedded" (its own process) or host:port[,host:port]. Default: embedded.
	Kafka string
	// NoFsync runs the stores behind the bridge without fsync: the embedded
	// Kafka broker keeps produced batches in the page cache (Apache Kafka's
	// default durability) and paymentd's ledger flushes without fsync.
	// Mosquitto does not fsync per message either way. Default: fsync, as
	// `edgebridge broker kafka` and paymentd ship.
	NoFsync bool
	// Devices and Outstanding (requests in flight per device) of the
	// full-load scenarios. Defaults: 50 and 4.
	Devices, Outstanding int
	// PayloadSize of each request in bytes. Default: 1024.
	PayloadSize int
	// Duration is the measured time of each full-load scenario, split
	// over Rounds. Defaults: 15s, 3 rounds.
	Duration time.Duration
	Rounds   int
	// ClosedLoop devices with one request outstanding each: a closed loop
	// that on 2 cores saturates the CPU, so its latency is queueing.
	// Default: 20.
	ClosedLoop int
	// Curve is the number of open-loop steps, at fractions of the measured
	// pipeline throughput, for the latency-vs-load plot. Default: 5; -1: none.
	Curve int
	// Rate is the open-loop pipeline scenario's requests/s, part of every
	// run: a site's rate (a few hundred terminals at their peak), timed
	// from the schedule. Default: 500; -1: none.
	Rate float64
	// TLS adds the "pipeline tls" scenario, interleaved with the others: a
	// second Mosquitto, Kafka broker and bridge with TLS on MQTT (devices
	// and bridge) and Kafka. Needs -mqtt mosquitto and -kafka embedded.
	TLS bool
	// Tracing, an OTLP/gRPC collector's host:port, adds the "pipeline
	// traced 1" and "pipeline traced 0.01" scenarios, interleaved with the
	// others: more brokers and bridges, exporting their spans there at
	// those sample ratios (the bench's paymentd records none). "local": a
	// receiver in the bench process that counts the spans and keeps none.
	Tracing string
	// Idle is how long the node as shipped (`edgebridge run`, brokers
	// in-process) is left idle before its footprint is read, after
	// footprintStarts fresh starts timed to ready. Default: 10s; -1: none.
	Idle time.Duration
	// Partitions of the request topic. Default: 8.
	Partitions int
	// BridgeConfig is appended to the bridge's YAML config (top-level sections).
	BridgeConfig string
	// ProfileDir, if set, receives the bridge's CPU profile of the first
	// full-load pipeline round (cpu.pprof) and its allocations
	// (allocs.pprof), the same of the node as shipped (shipped-*.pprof:
	// brokers in-process), of the traced stacks (traced-1-*.pprof,
	// traced-0.01-*.pprof) and of the site-rate scenarios (rate-*.pprof,
	// shipped-rate-*.pprof).
	ProfileDir string
	// Dir holds the brokers' data. Default: a temp dir, removed afterwards.
	Dir string
	// Log receives progress lines. Default: io.Discard.
	Log io.Writer
}

func (c Config) withDefaults() Config {
	defaults.Zero(&c.MQTT, "mosquitto")
	defaults.Zero(&c.Kafka, "embedded")
	defaults.Zero(&c.Devices, 50)
	defaults.Zero(&c.Outstanding, 4)
	defaults.Zero(&c.PayloadSize, 1024)
	defaults.Zero(&c.Rounds, 3)
	defaults.Zero(&c.ClosedLoop, 20)
	defaults.Zero(&c.Rate, SiteRate)
	defaults.Zero(&c.Curve, 5)
	defaults.Zero(&c.Partitions, 8)
	defaults.Positive(&c.Duration, 15*time.Second)
	defaults.Zero(&c.Idle, 10*time.Second)
	if c.Log == nil {
		c.Log = io.Discard
	}
	return c
}

// Latency percentiles in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func latencyOf(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(p float64) float64 {
		return float64(s[int(float64(len(s)-1)*p)]) / float64(time.Millisecond)
	}
	return Latency{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: at(1)}
}

// Scenario is what one scenario (or the sum of its rounds) measured.
type Scenario struct {
	Name        string `json:"name"`
	Round       int    `json:"round,omitempty"`
	Devices     int    `json:"devices,omitempty"`
	Outstanding int    `json:"outstanding"`
	// OfferedRate is the open-loop load in requests/s; 0 for a closed loop.
	OfferedRate float64 `json:"offered_msgs_per_sec,omitempty"`
	// Messages answered within the measured time, and that time.
	Messages   int     `json:"messages"`
	Seconds    float64 `json:"seconds"`
	Throughput float64 `json:"msgs_per_sec"`
	Latency    Latency `json:"latency_ms"`
	// ToBackend is the middle of the pipeline's path: from the bridge's
	// MQTT receipt to paymentd's handler (MQTT -> Kafka -> gRPC).
	ToBackend *Latency `json:"mqtt_to_backend_ms,omitempty"`
	// Stages: the site-rate scenarios' latency by leg, from the bridge's
	// histograms.
	Stages []Stage `json:"stages,omitempty"`
	// Lost are requests the broker acknowledged that never got a reply.
	Lost       int `json:"lost"`
	Duplicates int `json:"duplicate_replies"`
	// CPU is milliseconds of CPU per 1,000 messages, per process
	// (bridge, mosquitto, kafka, and "bench": devices, paymentd, baselines).
	CPU map[string]float64 `json:"cpu_ms_per_1k_msgs,omitempty"`
	// Bridge figures, for the scenarios that run through it.
	BridgeRSSMax        int64 `json:"bridge_rss_max_bytes,omitempty"`
	BridgeGoroutinesMax int   `json:"bridge_goroutines_max,omitempty"`

	lat     []time.Duration
	hop     []time.Duration
	cpuUsed map[string]time.Duration
	replies int // every reply, also those after the measured time
}

func (s *Scenario) finish() {
	if s.Seconds > 0 {
		s.Throughput = float64(s.Messages) / s.Seconds
	}
	s.Latency = latencyOf(s.lat)
	if len(s.hop) > 0 {
		l := latencyOf(s.hop)
		s.ToBackend = &l
	}
	if s.cpuUsed != nil && s.replies > 0 {
		s.CPU = map[string]float64{}
		for k, v := range s.cpuUsed {
			s.CPU[k] = float64(v) / float64(time.Millisecond) / float64(s.replies) * 1000
		}
	}
}

// merge sums the rounds of one scenario.
func merge(rounds []Scenario) Scenario {
	m := rounds[0]
	m.Round, m.Messages, m.Seconds, m.Lost, m.Duplicates, m.replies = 0, 0, 0, 0, 0, 0
	m.lat, m.hop, m.cpuUsed = nil, nil, map[string]time.Duration{}
	for _, r := range rounds {
		m.Messages += r.Messages
		m.Seconds += r.Seconds
		m.Lost += r.Lost
		m.Duplicates += r.Duplicates
		m.replies += r.replies
		m.lat = append(m.lat, r.lat...)
		m.hop = append(m.hop, r.hop...)
		m.BridgeRSSMax = max(m.BridgeRSSMax, r.BridgeRSSMax)
		m.BridgeGoroutinesMax = max(m.BridgeGoroutinesMax, r.BridgeGoroutinesMax)
		for k, v := range r.cpuUsed {
			m.cpuUsed[k] += v
		}
	}
	m.finish()
	return m
}

// SiteRate is a site's rate in requests/s: a few hundred terminals at
// their peak. The bench's open-loop point and the demo's first phase.
const SiteRate = 500

// Report is a run's result. Its JSON form is the bench's -json output.
type Report struct {
	Throughput        float64 `json:"throughput_msgs_per_sec"`
	BaselineMQTT      float64 `json:"baseline_mqtt_msgs_per_sec"`
	BaselineKafka     float64 `json:"baseline_kafka_msgs_per_sec"`
	BaselineGRPC      float64 `json:"baseline_grpc_msgs_per_sec"`
	ThroughputVsMQTT  float64 `json:"throughput_vs_mqtt_baseline"`
	Latency           Latency `json:"latency_ms"`
	ClosedLoopLatency Latency `json:"closed_loop_latency_ms"`
	// SiteRateLatency is the node as shipped's when it ran (with fsync),
	// else the separate layout's.
	SiteRateLatency Latency `json:"site_rate_latency_ms"`
	// The node as shipped (`edgebridge run`) at full load, when it ran.
	ShippedThroughput float64 `json:"shipped_msgs_per_sec,omitempty"`
	ShippedLatency    Latency `json:"shipped_latency_ms"`
	ShippedRSSMax     int64   `json:"shipped_rss_max_bytes,omitempty"`
	Lost              int     `json:"lost"`
	BridgeRSSMax      int64   `json:"bridge_rss_max_bytes"`
	BridgeCPUPer1k    float64 `json:"bridge_cpu_ms_per_1k_msgs"`
	BridgeGoroutines  int     `json:"bridge_goroutines_max"`
	// Responders of the raw round trip, and its throughput as each was added.
	Responders []ResponderStep `json:"raw_responders"`
	Footprint  Footprint       `json:"footprint"`
	// Spans the -tracing local receiver got.
	Spans     int64      `json:"spans_received,omitempty"`
	Targets   []Target   `json:"targets"`
	Scenarios []Scenario `json:"scenarios"`
	Rounds    []Scenario `json:"rounds"`
	Curve     []Scenario `json:"load_curve"`
	Setup     Setup      `json:"setup"`
	Started   time.Time  `json:"started"`
	Finished  time.Time  `json:"finished"`
}

// Target is one of the performance targets and whether this run met it.
type Target struct {
	Name string  `json:"name"`
	Want string  `json:"want"`
	Got  float64 `json:"got"`
	Met  bool    `json:"met"`
}

// Setup records what was measured and where.
type Setup struct {
	MQTT  string `json:"mqtt"`
	Kafka string `json:"kafka"`
	// Durability says whether the embedded Kafka broker and the ledger fsynced.
	Durability  string  `json:"durability"`
	Devices     int     `json:"devices"`
	Outstanding int     `json:"outstanding"`
	PayloadSize int     `json:"payload_bytes"`
	Duration    string  `json:"duration"`
	Rounds      int     `json:"rounds"`
	ClosedLoop  int     `json:"closed_loop_devices"`
	Rate        float64 `json:"site_rate_msgs_per_sec"`
	// Responders the raw round trip settled on (see Report.Responders).
	Responders int    `json:"raw_responders"`
	CPUs       int    `json:"cpus"`
	CPUModel   string `json:"cpu_model"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
}

// bridgeWindow is backend.window's default: the gRPC echo baseline keeps
// the same number of deliveries outstanding on its one stream.
const bridgeWindow = ackwindow.DefaultSize

// Run starts everything, runs the scenarios and stops everything. ctx
// ending stops the run early with its error.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	if cfg.Bridge == "" {
		return nil, fmt.Errorf("bench: no edgebridge binary")
	}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "edgebridge-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		cfg.Dir = dir
	}
	logf := func(format string, a ...any) { fmt.Fprintf(cfg.Log, format+"\n", a...) }
	rep := &Report{Started: time.Now(), Setup: setupOf(cfg)}

	logf("starting %s, kafka %s, paymentd and edgebridge", cfg.MQTT, cfg.Kafka)
	e, err := startEnv(ctx, cfg, false)
	if err != nil {
		return nil, err
	}
	defer e.close()
	refl, err := startReflector(e.mqttURL)
	if err != nil {
		return nil, err
	}
	defer refl.close()
	r := &runner{cfg: cfg, e: e}
	var extra []*env // the TLS and traced stacks: closed after the rounds
	var rt *runner   // the TLS env's, with cfg.TLS
	if cfg.TLS {
		if cfg.MQTT != "mosquitto" || cfg.Kafka != "embedded" {
			return nil, fmt.Errorf("bench: -tls needs -mqtt mosquitto and -kafka embedded")
		}
		logf("starting the same with TLS on MQTT and Kafka")
		tcfg := cfg
		tcfg.Dir = filepath.Join(cfg.Dir, "tls")
		et, err := startEnv(ctx, tcfg, true)
		if err != nil {
			return nil, err
		}
		defer et.close()
		extra = append(extra, et)
		rt = &runner{cfg: cfg, e: et}
		if _, err := rt.devices(ctx, "warm-tls", cfg.Devices, cfg.Outstanding, time.Second, 0, false); err != nil {
			return nil, err
		}
	}

	var shipped *runner // the node as shipped; not with NoFsync: its broker always fsyncs
	if !cfg.NoFsync {
		logf("starting the node as shipped (edgebridge run, both brokers in-process) against the same paymentd")
		es, err := startShippedEnv(ctx, cfg, e)
		if err != nil {
			return nil, err
		}
		defer es.close()
		shipped = &runner{cfg: cfg, e: es, suffix: "as shipped"}
		if _, err := shipped.devices(ctx, "warm-shipped", cfg.Devices, cfg.Outstanding, time.Second, 0, false); err != nil {
			return nil, err
		}
	}

	var traced []*runner // with cfg.Tracing: one per sample ratio
	if cfg.Tracing == "local" {
		sink, err := startSpanSink()
		if err != nil {
			return nil, err
		}
		defer sink.close()
		defer func() { rep.Spans = sink.spans.Load() }()
		cfg.Tracing = sink.addr
	}
	if cfg.Tracing != "" {
		for _, ratio := range []string{"1", "0.01"} {
			logf("starting the same with tracing at sample ratio %s to %s", ratio, cfg.Tracing)
			tcfg := cfg
			tcfg.Dir = filepath.Join(cfg.Dir, "traced-"+ratio)
			tcfg.BridgeConfig += fmt.Sprintf("tracing:\n  endpoint: %s\n  sample_ratio: %s\n", cfg.Tracing, ratio)
			et, err := startEnv(ctx, tcfg, false)
			if err != nil {
				return nil, err
			}
			defer et.close()
			extra = append(extra, et)
			tr := &runner{cfg: cfg, e: et, suffix: "traced " + ratio}
			if _, err := tr.devices(ctx, fmt.Sprintf("warm-traced%d", len(traced)), cfg.Devices, cfg.Outstanding, time.Second, 0, false); err != nil {
				return nil, err
			}
			traced = append(traced, tr)
		}
	}

	// Warm up both paths: connections, topics, consumer group, broker sessions.
	warm := time.Second
	if _, err := r.devices(ctx, "warm-pipe", cfg.Devices, cfg.Outstanding, warm, 0, false); err != nil {
		return nil, err
	}
	if _, err := r.devices(ctx, "warm-raw", cfg.Devices, cfg.Outstanding, warm, 0, true); err != nil {
		return nil, err
	}

	per := cfg.Duration / time.Duration(cfg.Rounds)
	if rep.Responders, err = settleResponders(ctx, r, refl, max(per/2, time.Second), logf); err != nil {
		return nil, err
	}
	rep.Setup.Responders = len(refl.cs)
	byName := map[string][]Scenario{}
	var order []string
	add := func(s Scenario) {
		if _, ok := byName[s.Name]; !ok {
			order = append(order, s.Name)
		}
		byName[s.Name] = append(byName[s.Name], s)
		rep.Rounds = append(rep.Rounds, s)
	}
	for round := 1; round <= cfg.Rounds; round++ {
		steps := []func() (Scenario, error){
			func() (Scenario, error) {
				return r.devices(ctx, fmt.Sprintf("raw%d", round), cfg.Devices, cfg.Outstanding, per, 0, true)
			},
			func() (Scenario, error) {
				if round == 1 {
					defer r.profile("", per)()
				}
				return r.devices(ctx, fmt.Sprintf("pipe%d", round), cfg.Devices, cfg.Outstanding, per, 0, false)
			},
			func() (Scenario, error) {
				return r.measure(ctx, false, func() (Scenario, error) {
					return runKafka(ctx, e.brokers, fmt.Sprintf("edgebridge.bench.raw.%d.%d", rep.Started.Unix(), round),
						cfg.Partitions, cfg.Devices, cfg.Outstanding, cfg.PayloadSize, per)
				})
			},
			func() (Scenario, error) {
				return r.measure(ctx, false, func() (Scenario, error) { return runGRPC(ctx, bridgeWindow, cfg.PayloadSize, per) })
			},
		}
		if rt != nil {
			steps = append(steps, func() (Scenario, error) {
				return rt.devices(ctx, fmt.Sprintf("pipetls%d", round), cfg.Devices, cfg.Outstanding, per, 0, false)
			})
		}
		if shipped != nil {
			steps = append(steps, func() (Scenario, error) {
				if round == 1 {
					defer shipped.profile("shipped-", per)()
				}
				return shipped.devices(ctx, fmt.Sprintf("pipeshipped%d", round), cfg.Devices, cfg.Outstanding, per, 0, false)
			})
		}
		for k, tr := range traced {
			steps = append(steps, func() (Scenario, error) {
				if round == 1 {
					defer tr.profile(strings.ReplaceAll(tr.suffix, " ", "-")+"-", per)()
				}
				return tr.devices(ctx, fmt.Sprintf("pipetr%d-%d", k, round), cfg.Devices, cfg.Outstanding, per, 0, false)
			})
		}
		for _, step := range steps {
			s, err := step()
			if err != nil {
				return nil, err
			}
			s.Round = round
			add(s)
			logf("  round %d %-10s %8.0f msg/s  p50 %6.2f ms  p99 %6.2f ms  lost %d", round, s.Name, s.Throughput, s.Latency.P50, s.Latency.P99, s.Lost)
		}
	}
	// From here one stack runs at a time, as on a node: the others, idle
	// in the background, would put their periodic work (trims, heartbeats,
	// span exports) into these scenarios' latency tails.
	for _, x := range extra {
		x.close()
	}
	var rates []Scenario // at a site's rate: as shipped, then the separate layout
	siteRate := func(rr *runner, devices, profile string) error {
		before, err := rr.e.bridge.Metrics()
		if err != nil {
			return err
		}
		done := rr.profile(profile, cfg.Duration)
		s, err := rr.devices(ctx, devices, cfg.Devices, 64, cfg.Duration, cfg.Rate, false)
		if err != nil {
			return err
		}
		done()
		after, err := rr.e.bridge.Metrics()
		if err != nil {
			return err
		}
		s.Stages = stages(before, after)
		s.Name += " at a site's rate"
		rates = append(rates, s)
		logf("  %s, %.0f msg/s offered: %.0f msg/s  p50 %.2f ms  p99 %.2f ms", s.Name, cfg.Rate, s.Throughput, s.Latency.P50, s.Latency.P99)
		return nil
	}
	if shipped != nil {
		// As shipped first (the separate layout idle meanwhile), then
		// the node is stopped. Its devices are its own: paymentd would
		// answer the same ids from its store, as redeliveries.
		if cfg.Rate > 0 {
			if err := siteRate(shipped, "rateshipped", "shipped-rate-"); err != nil {
				return nil, err
			}
		}
		shipped.e.close()
	}

	low, err := r.devices(ctx, "closed", cfg.ClosedLoop, 1, max(per, 3*time.Second), 0, false)
	if err != nil {
		return nil, err
	}
	low.Name = fmt.Sprintf("pipeline closed loop %d x 1", cfg.ClosedLoop)
	add(low)
	logf("  %s: p50 %.2f ms  p99 %.2f ms", low.Name, low.Latency.P50, low.Latency.P99)

	merged := map[string]Scenario{}
	for _, name := range order {
		merged[name] = merge(byName[name])
		rep.Scenarios = append(rep.Scenarios, merged[name])
	}
	pipe := merged["pipeline"]
	rep.Throughput = pipe.Throughput
	rep.Latency = pipe.Latency
	rep.BaselineMQTT = merged["mqtt raw"].Throughput
	rep.BaselineKafka = merged["kafka raw"].Throughput
	rep.BaselineGRPC = merged["grpc echo"].Throughput
	rep.ClosedLoopLatency = low.Latency
	if s, ok := merged["pipeline as shipped"]; ok {
		rep.ShippedThroughput, rep.ShippedLatency = s.Throughput, s.Latency
	}
	if rep.BaselineMQTT > 0 {
		rep.ThroughputVsMQTT = rep.Throughput / rep.BaselineMQTT
	}

	// Latency against load: open loop at fractions of what the closed loop reached.
	if cfg.Curve > 0 {
		for i := 1; i <= cfg.Curve; i++ {
			rate := pipe.Throughput * float64(i) / float64(cfg.Curve+1)
			s, err := r.devices(ctx, fmt.Sprintf("curve%d", i), cfg.Devices, 64, max(per, 2*time.Second), rate, false)
			if err != nil {
				return nil, err
			}
			s.Name = "pipeline open loop"
			rep.Curve = append(rep.Curve, s)
			logf("  open loop %6.0f msg/s offered: %6.0f msg/s  p50 %6.2f ms  p99 %6.2f ms", rate, s.Throughput, s.Latency.P50, s.Latency.P99)
		}
	}
	if cfg.Rate > 0 {
		if err := siteRate(r, "rate", "rate-"); err != nil {
			return nil, err
		}
		// The headline: the node as shipped when it ran (the first).
		rep.SiteRateLatency = rates[0].Latency
		rep.Scenarios = append(rep.Scenarios, rates[len(rates)-1])
		if len(rates) > 1 {
			rep.Scenarios = append(rep.Scenarios, rates[0])
		}
	}
	e.stopStack() // the footprint's nodes use paymentd alone

	if cfg.Idle > 0 {
		logf("the node as shipped: %d fresh starts, then %s idle", footprintStarts, cfg.Idle)
		if rep.Footprint, err = measureFootprint(ctx, cfg.Bridge, filepath.Join(cfg.Dir, "footprint"), e.payAddr, cfg.Idle); err != nil {
			return nil, err
		}
		f := rep.Footprint
		logf("  ready %.0f ms, idle RSS %.1f MB, %d goroutines, %.2f %% of a core; binary %.1f MB",
			f.ReadyMillis, float64(f.IdleRSSBytes)/(1<<20), f.IdleGoroutines, f.IdleCPUPercent, float64(f.BinaryBytes)/(1<<20))
	}

	for _, s := range append(slices.Clone(rep.Scenarios), rep.Curve...) {
		rep.Lost += s.Lost
		if strings.Contains(s.Name, "as shipped") { // the whole node's figures
			rep.ShippedRSSMax = max(rep.ShippedRSSMax, s.BridgeRSSMax)
			continue
		}
		rep.BridgeRSSMax = max(rep.BridgeRSSMax, s.BridgeRSSMax)
		rep.BridgeGoroutines = max(rep.BridgeGoroutines, s.BridgeGoroutinesMax)
	}
	rep.BridgeCPUPer1k = pipe.CPU["bridge"]
	rep.Targets = targets(rep)
	rep.Finished = time.Now()
	return rep, nil
}

// ResponderStep is the raw round trip's throughput with that many responders.
type ResponderStep struct {
	Responders int     `json:"responders"`
	Throughput float64 `json:"msgs_per_sec"`
}

// settleResponders adds responders to the raw MQTT round trip while one
// more raises its throughput by at least 5 %: the baseline is the broker's
// ceiling, not the bench's one client's.
func settleResponders(ctx context.Context, r *runner, refl *reflector, d time.Duration, logf func(string, ...any)) ([]ResponderStep, error) {
	var steps []ResponderStep
	for {
		s, err := r.devices(ctx, fmt.Sprintf("settle%d", len(refl.cs)), r.cfg.Devices, r.cfg.Outstanding, d, 0, true)
		if err != nil {
			return nil, err
		}
		steps = append(steps, ResponderStep{Responders: len(refl.cs), Throughput: s.Throughput})
		logf("  raw round trip, %d responders: %.0f msg/s", len(refl.cs), s.Throughput)
		if n := len(steps); n > 1 && steps[n-1].Throughput < 1.05*steps[n-2].Throughput || len(refl.cs) == maxResponders {
			return steps, nil
		}
		if err := refl.add(); err != nil {
			return nil, err
		}
	}
}

func targets(r *Report) []Target {
	named := map[string]Scenario{}
	for _, s := range r.Scenarios {
		named[s.Name] = s
	}
	pipe, rate := named["pipeline"], named["pipeline at a site's rate"]
	fsync := r.Setup.Durability == "fsync"
	le := func(name, want string, got, limit float64) Target {
		return Target{Name: name, Want: want, Got: got, Met: got > 0 && got <= limit}
	}
	siteP99 := le("p99 latency at a site's rate (open loop), ms", "<= 10", r.SiteRateLatency.P99, 10)
	if !fsync {
		siteP99 = le("p99 latency at a site's rate (open loop), ms", "<= 5", r.SiteRateLatency.P99, 5)
	}
	ts := []Target{
		{Name: "throughput vs the raw MQTT round trip", Want: ">= 0.9", Got: r.ThroughputVsMQTT, Met: r.ThroughputVsMQTT >= 0.9},
		siteP99,
	}
	if !fsync {
		ts = append(ts, le("p99 latency closed loop N x 1 (queueing), ms", "<= 10", r.ClosedLoopLatency.P99, 10))
	}
	if rate.CPU != nil {
		ts = append(ts,
			le("bridge CPU at a site's rate, ms per 1k", "<= 300", rate.CPU["bridge"], 300),
			le("Kafka broker CPU at a site's rate, ms per 1k", "<= 300", rate.CPU["kafka"], 300))
	}
	if m := pipe.CPU["mosquitto"]; m > 0 {
		ts = append(ts, le("bridge CPU per message / Mosquitto's, full load", "<= 1.0", pipe.CPU["bridge"]/m, 1))
		if s, ok := named["pipeline as shipped"]; ok && s.CPU["bridge"] > 0 {
			ts = append(ts, le("node as shipped CPU per message / (Mosquitto's + Kafka broker's)", "<= 1.0", s.CPU["bridge"]/(m+pipe.CPU["kafka"]), 1))
		}
	}
	ts = append(ts, le("bridge peak RSS, MB", "<= 48", float64(r.BridgeRSSMax)/(1<<20), 48))
	if f := r.Footprint; f.BinaryBytes > 0 {
		ts = append(ts,
			le("idle RSS of the node as shipped, MB", "<= 20", float64(f.IdleRSSBytes)/(1<<20), 20),
			le("exec to ready, empty data dir, ms", "<= 100", f.ReadyMillis, 100),
			le("binary, MB", "<= 20", float64(f.BinaryBytes)/(1<<20), 20))
	}
	for _, tr := range []struct {
		ratio string
		limit float64
	}{{"0.01", 3}, {"1", 15}} {
		s, ok := named["pipeline traced "+tr.ratio]
		if !ok || pipe.Throughput == 0 || pipe.CPU["bridge"] == 0 {
			continue
		}
		loss := 100 * (1 - s.Throughput/pipe.Throughput)
		more := 100 * (s.CPU["bridge"]/pipe.CPU["bridge"] - 1)
		want := fmt.Sprintf("<= %.0f", tr.limit)
		ts = append(ts,
			Target{Name: "tracing " + tr.ratio + ": throughput lost, %", Want: want, Got: loss, Met: loss <= tr.limit},
			Target{Name: "tracing " + tr.ratio + ": bridge CPU per message added, %", Want: want, Got: more, Met: more <= tr.limit})
	}
	return append(ts, Target{Name: "lost messages", Want: "0", Got: float64(r.Lost), Met: r.Lost == 0})
}

// runner runs scenarios against one env.
type runner struct {
	cfg Config
	e   *env
	// suffix of its pipeline scenarios' names ("traced 1").
	suffix string
}

// profile, with cfg.ProfileDir, starts profiling the bridge and the bench
// for d (see env.profile); the func it returns waits for the profiles.
func (r *runner) profile(prefix string, d time.Duration) (wait func()) {
	if r.cfg.ProfileDir == "" {
		return func() {}
	}
	profiled := make(chan error, 1)
	go func() { profiled <- r.e.profile(r.cfg.ProfileDir, prefix, d) }()
	return func() {
		if err := <-profiled; err != nil {
			fmt.Fprintf(r.cfg.Log, "  %v\n", err)
		}
	}
}

// devices runs simulated devices for d against the pipeline, or with raw
// against the reflector. rate > 0 makes it an open loop.
func (r *runner) devices(ctx context.Context, prefix string, devices, outstanding int, d time.Duration, rate float64, raw bool) (Scenario, error) {
	name, req, rep := "pipeline", "", ""
	if raw {
		name, req, rep = "mqtt raw", rawRequestTopic, rawReplyTopic
	}
	var connect func(string) devicesim.Conn
	if r.e.tls != nil {
		name += " tls"
		connect = func(string) devicesim.Conn { return devicesim.Conn{TLS: r.e.tls.client} }
	}
	if r.suffix != "" {
		name += " " + r.suffix
	}
	return r.measure(ctx, !raw, func() (Scenario, error) {
		res, err := devicesim.Run(ctx, devicesim.Config{
			Broker: r.e.mqttURL, Devices: devices, Outstanding: outstanding, DevicePrefix: prefix,
			RequestTopic: req, ReplyTopic: rep, Duration: d, Rate: rate, PayloadSize: r.cfg.PayloadSize, Connect: connect,
		}, nil)
		if err != nil {
			return Scenario{}, err
		}
		return Scenario{
			Name: name, Devices: devices, Outstanding: outstanding, OfferedRate: rate,
			Messages: res.InWindow, Seconds: d.Seconds(), Lost: res.Lost(), Duplicates: res.Duplicates,
			lat: res.Latencies, replies: res.Replied,
		}, nil
	})
}

// measure runs fn and adds the processes' CPU time, the bridge's peak RSS
// and its most goroutines seen meanwhile.
func (r *runner) measure(ctx context.Context, throughBridge bool, fn func() (Scenario, error)) (Scenario, error) {
	procs := map[string]int{"bench": os.Getpid(), "bridge": r.e.bridge.PID()}
	if r.e.mosq != nil {
		procs["mosquitto"] = r.e.mosq.PID()
	}
	if r.e.kafka != nil {
		procs["kafka"] = r.e.kafka.PID()
	}
	before := map[string]procStat{}
	for name, pid := range procs {
		st, err := readProcStat(pid)
		if err != nil {
			return Scenario{}, fmt.Errorf("bench: %s stats: %w", name, err)
		}
		before[name] = st
	}
	stop := make(chan struct{})
	var most int
	var wg sync.WaitGroup
	if throughBridge {
		wg.Go(func() {
			// /metrics costs the bridge CPU: once a second.
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				if n, err := r.e.goroutines(); err == nil {
					most = max(most, n)
				}
				select {
				case <-t.C:
				case <-stop:
					return
				}
			}
		})
	}
	r.e.hops.take()
	s, err := fn()
	s.hop = r.e.hops.take()
	close(stop)
	wg.Wait()
	if err != nil {
		return s, err
	}
	if err := r.e.bridge.Exited(); err != nil {
		return s, err
	}
	s.cpuUsed = map[string]time.Duration{}
	for name, pid := range procs {
		st, err := readProcStat(pid)
		if err != nil {
			return s, fmt.Errorf("bench: %s stats: %w", name, err)
		}
		s.cpuUsed[name] = st.CPU - before[name].CPU
		if name == "bridge" && throughBridge {
			s.BridgeRSSMax = st.PeakRSS
			s.BridgeGoroutinesMax = most
		}
	}
	s.finish()
	return s, ctx.Err()
}

func setupOf(cfg Config) Setup {
	durability := "fsync"
	if cfg.NoFsync {
		durability = "no fsync"
	}
	if cfg.Kafka != "embedded" {
		durability = "kafka: the broker's own; ledger: " + durability
	}
	return Setup{
		MQTT: cfg.MQTT, Kafka: cfg.Kafka, Durability: durability, Devices: cfg.Devices, Outstanding: cfg.Outstanding,
		PayloadSize: cfg.PayloadSize, Duration: cfg.Duration.String(), Rounds: cfg.Rounds, ClosedLoop: cfg.ClosedLoop, Rate: cfg.Rate,
		CPUs: runtime.NumCPU(), CPUModel: cpuModel(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH,
	}
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
