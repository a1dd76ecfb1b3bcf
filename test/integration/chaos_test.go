package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/proc"
	"github.com/edgebridge/edgebridge/payment"
)

// The fault matrix: real Mosquitto, the Kafka-protocol broker, paymentd and
// the bridge as child processes, simulated devices, injected faults, and a
// checker over what devices sent, what the backend processed and what
// replies came back. CI runs it short; `make chaos` sets
// EDGEBRIDGE_CHAOS_FULL=1 for >= 5,000 requests per scenario, and
// EDGEBRIDGE_CHAOS_REPORT=FILE writes the table for docs/RELIABILITY.md.

func chaosFull() bool { return os.Getenv("EDGEBRIDGE_CHAOS_FULL") == "1" }

// load is the devices x requests of every scenario.
func load() (devices, requests int) {
	if chaosFull() {
		return 50, 100
	}
	return 10, 50
}

// report is what the checker found in one scenario.
type report struct {
	Scenario       string        `json:"scenario"`
	Requests       int           `json:"requests"`
	Lost           int           `json:"lost"`            // PUBACKed to the device, never processed
	ProcessedTwice int           `json:"processed_twice"` // ledger entries beyond the first per message
	WireDuplicates int           `json:"wire_duplicates"` // redeliveries the backend saw + duplicate replies at devices
	MaxReorder     int           `json:"max_reorder"`     // largest step back in a device's processing order
	Unanswered     int           `json:"unanswered"`      // processed, but no reply reached the device
	NeverAcked     int           `json:"never_acked"`     // published, never PUBACKed by the broker (not promised)
	Recovery       time.Duration `json:"recovery_ns"`     // fault over -> replies flowing again
	Note           string        `json:"note,omitempty"`
}

func (r report) String() string {
	return fmt.Sprintf("%-24s requests %5d  lost %d  twice %d  wire-dup %d  max-reorder %d  unanswered %d  never-acked %d  recovery %s  %s",
		r.Scenario, r.Requests, r.Lost, r.ProcessedTwice, r.WireDuplicates, r.MaxReorder, r.Unanswered, r.NeverAcked, r.Recovery.Round(time.Millisecond), r.Note)
}

type chaosOpts struct {
	payArgs   []string // extra paymentd flags
	mqttProxy bool     // the bridge reaches Mosquitto through a fault proxy
	kafkaVia  bool     // the bridge reaches Kafka through a fault proxy (advertised)
	shared    bool     // shared subscription, so several bridges can share the load
	devices   func(*devicesim.Config)
}

type chaosRig struct {
	t              *testing.T
	mq             *mosq
	kafkaAddr      string // what clients dial (the proxy, if any)
	kafkaListen    string
	kafkaDir       string
	kafka          *proc.Process
	pay            *paymentd
	payMetrics     string
	cfgPath, admin string
	bridge         *bridgeProc
	opts           chaosOpts
	toxi           *toxiproxy.ApiServer
	mqttProxy      *toxiproxy.Proxy
	kafkaProxy     *toxiproxy.Proxy
	bridgeOpts     bridgeOpts
}

func newChaosRig(t *testing.T, o chaosOpts) *chaosRig {
	t.Helper()
	c := &chaosRig{t: t, opts: o, mq: startMosquitto(t), kafkaDir: t.TempDir()}
	c.toxi = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	c.kafkaListen = freeAddr(t)
	c.kafkaAddr = c.kafkaListen
	var advertise []string
	if o.kafkaVia {
		c.kafkaProxy = c.proxy("kafka", c.kafkaListen)
		c.kafkaAddr = c.kafkaProxy.Listen
		advertise = []string{"-advertise", c.kafkaAddr}
	}
	c.startKafka(advertise...)
	c.payMetrics = freeAddr(t)
	c.pay = startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"), append([]string{"-metrics", c.payMetrics}, o.payArgs...)...)
	mqttURL := c.mq.url()
	if o.mqttProxy {
		c.mqttProxy = c.proxy("mqtt", c.mq.addr)
		mqttURL = "tcp://" + c.mqttProxy.Listen
	}
	c.bridgeOpts = bridgeOpts{mqtt: mqttURL, kafka: c.kafkaAddr, backend: c.pay.addr, clientID: "bridge-1"}
	if o.shared {
		c.bridgeOpts.subscribe = "$share/edgebridge/payment/request/+"
	}
	c.cfgPath, c.admin = writeBridgeConfig(t, c.bridgeOpts)
	c.bridge = startBridge(t, c.cfgPath, c.admin)
	return c
}

func (c *chaosRig) proxy(name, upstream string) *toxiproxy.Proxy {
	c.t.Helper()
	p := toxiproxy.NewProxy(c.toxi, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(p.Stop)
	return p
}

func (c *chaosRig) startKafka(extra ...string) {
	c.t.Helper()
	c.kafka = start(c.t, bins.edgebridge, append([]string{"broker", "kafka", "-listen", c.kafkaListen, "-data", c.kafkaDir, "-partitions", "8"}, extra...)...)
	waitFor(c.t, 20*time.Second, "kafka broker listening", func() bool { return dialable(c.kafkaListen) })
}

// progress is what a fault sees of the running devices.
type progress struct {
	counters *devicesim.Counters
	total    int
	done     chan struct{} // closed when the devices finished
}

// atFraction waits until f of all requests got their reply.
func (p *progress) atFraction(t *testing.T, f float64) {
	t.Helper()
	want := int64(f * float64(p.total))
	waitFor(t, 3*time.Minute, fmt.Sprintf("%d replies", want), func() bool { return p.counters.Replied.Load() >= want })
}

// recovered waits until replies move again and returns how long that took.
func (p *progress) recovered(t *testing.T) time.Duration {
	t.Helper()
	from, start := p.counters.Replied.Load(), time.Now()
	waitFor(t, 3*time.Minute, "replies flowing again", func() bool {
		select {
		case <-p.done:
			return true
		default:
		}
		return p.counters.Replied.Load() > from
	})
	return time.Since(start)
}

type scenario struct {
	name      string
	opts      chaosOpts
	allowLoss bool // a property of the broker, measured and documented
	fault     func(c *chaosRig, p *progress) (recovery time.Duration, note string)
	check     func(t *testing.T, c *chaosRig, r report)
}

func TestChaos(t *testing.T) {
	var (
		mu      sync.Mutex
		reports []report
	)
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			c := newChaosRig(t, sc.opts)
			r := c.drive(sc)
			t.Log(r)
			mu.Lock()
			reports = append(reports, r)
			mu.Unlock()
			if r.Lost != 0 && !sc.allowLoss {
				t.Errorf("lost %d requests, want 0", r.Lost)
			}
			if r.ProcessedTwice != 0 {
				t.Errorf("processed twice: %d, want 0", r.ProcessedTwice)
			}
			if r.Unanswered != 0 && !sc.allowLoss {
				t.Errorf("unanswered: %d, want 0", r.Unanswered)
			}
			if r.MaxReorder != 0 {
				t.Errorf("per-device order broken by up to %d requests, want 0", r.MaxReorder)
			}
			if sc.check != nil {
				sc.check(t, c, r)
			}
		})
	}
	if path := os.Getenv("EDGEBRIDGE_CHAOS_REPORT"); path != "" {
		b, _ := json.MarshalIndent(reports, "", "  ")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// drive runs the devices, injects the fault, and checks the outcome.
func (c *chaosRig) drive(sc scenario) report {
	t := c.t
	devices, requests := load()
	cfg := devicesimConfig(c.mq.url(), devices, requests)
	if c.opts.devices != nil {
		c.opts.devices(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	results := runDevices(ctx, cfg)
	p := &progress{counters: cfg.Counters, total: cfg.Devices * cfg.Requests, done: make(chan struct{})}
	var res devicesim.Result
	go func() { res = <-results; close(p.done) }()
	r := report{Scenario: sc.name, Requests: p.total}
	if sc.fault != nil {
		// On the test goroutine, so the fault may fail the test.
		r.Recovery, r.Note = sc.fault(c, p)
	}
	if sc.allowLoss {
		// Devices whose requests or replies the broker lost wait forever:
		// stop them once no reply arrived for 5s.
		last, idle := p.counters.Replied.Load(), time.Now()
		for quiet := false; !quiet; {
			select {
			case <-p.done:
				quiet = true
			case <-time.After(100 * time.Millisecond):
				if n := p.counters.Replied.Load(); n != last {
					last, idle = n, time.Now()
				}
				quiet = time.Since(idle) > 5*time.Second
			}
		}
		cancel()
	}
	<-p.done

	entries, err := payment.ReadLedger(c.pay.ledger)
	if err != nil {
		t.Fatal(err)
	}
	a := devicesim.AuditLedger(entries)
	r.ProcessedTwice, r.MaxReorder = a.Twice, a.MaxReorder
	seen := a.Processed
	for i := range cfg.Devices {
		for n := range cfg.Requests {
			k := cfg.DeviceID(i+1) + "/" + devicesim.RequestID(n)
			switch {
			case seen[k]:
			case res.Acked[k]:
				r.Lost++
			default:
				r.NeverAcked++ // the device never got a PUBACK: nothing was promised
			}
		}
	}
	for _, k := range res.Missing {
		if seen[k] {
			r.Unanswered++
		}
	}
	r.WireDuplicates = res.Duplicates + int(c.backendDuplicates())
	return r
}

// backendDuplicates is how many redeliveries paymentd answered with the
// stored result (edgebridge_backend_duplicates_total).
func (c *chaosRig) backendDuplicates() float64 {
	resp, err := http.Get("http://" + c.payMetrics + "/metrics")
	if err != nil {
		c.t.Errorf("scrape paymentd: %v", err)
		return 0
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Errorf("scrape paymentd: %v", err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "edgebridge_backend_duplicates_total "); ok {
			var n float64
			fmt.Sscanf(v, "%g", &n)
			return n
		}
	}
	c.t.Error("paymentd does not serve edgebridge_backend_duplicates_total")
	return 0
}

func scenarios() []scenario {
	period, delay := time.Second, 10*time.Millisecond
	if chaosFull() {
		period, delay = 15*time.Second, 20*time.Millisecond
	}
	return []scenario{
		{name: "baseline", check: noBrokerDrops},
		// One request outstanding per device and four times the requests
		// keep the load going through five kills, each followed by the
		// group's 10s session timeout: each kill waits for the restarted
		// bridge's first commit (kafka.commit_interval, 200ms), and with
		// 500 requests a bridge fast enough answered the last 2/7 of them
		// within that time, leaving nothing to kill under load.
		{name: "bridge-sigkill-x5", opts: chaosOpts{devices: func(d *devicesim.Config) { d.Outstanding, d.Requests = 1, 4*d.Requests }}, fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			var worst time.Duration
			kills := 0
			for i := range 5 {
				p.atFraction(c.t, float64(i+1)/7)
				// Under load, not in the instant after a restart: this
				// bridge has consumed and committed at least once.
				if !c.committedOnce(p) {
					break // the devices finished first
				}
				c.bridge.Kill()
				kills++
				c.bridge = startBridge(c.t, c.cfgPath, c.admin)
				worst = max(worst, p.recovered(c.t))
			}
			if kills < 5 {
				c.t.Errorf("only %d kills before the devices finished, want 5", kills)
			}
			return worst, "until replies flow again, worst of 5 (includes the consumer group session timeout, 10s)"
		}},
		{name: "bridge-sigterm", fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			p.atFraction(c.t, 0.4)
			if err := c.bridge.Stop(30 * time.Second); err != nil {
				c.t.Errorf("graceful stop: %v", err)
			}
			c.bridge = startBridge(c.t, c.cfgPath, c.admin)
			return p.recovered(c.t), ""
		}, check: func(t *testing.T, c *chaosRig, r report) {
			if r.WireDuplicates != 0 {
				t.Errorf("graceful stop: %d duplicates on the wire, want 0", r.WireDuplicates)
			}
		}},
		{name: "kafka-sigkill", fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			p.atFraction(c.t, 0.3)
			c.kafka.Kill()
			time.Sleep(2 * time.Second) // the outage
			c.startKafka()
			return p.recovered(c.t), "down 2s"
		}},
		{name: "kafka-sigstop", fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			p.atFraction(c.t, 0.3)
			_ = c.kafka.Signal(syscall.SIGSTOP)
			time.Sleep(12 * time.Second) // past the 10s produce write timeout
			_ = c.kafka.Signal(syscall.SIGCONT)
			return p.recovered(c.t), "frozen 12s"
		}},
		{name: "kafka-partition-30s", opts: chaosOpts{kafkaVia: true}, fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			p.atFraction(c.t, 0.3)
			outage := 30 * time.Second
			if !chaosFull() {
				outage = 8 * time.Second
			}
			c.kafkaProxy.Stop() // connections cut, new ones refused
			time.Sleep(outage)
			if err := c.kafkaProxy.Start(); err != nil {
				c.t.Fatal(err)
			}
			return p.recovered(c.t), fmt.Sprintf("cut %s", outage)
		}},
		{name: "kafka-degraded-link", opts: chaosOpts{kafkaVia: true}, fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			for _, doc := range []string{
				`{"name":"lat","type":"latency","stream":"downstream","attributes":{"latency":30,"jitter":10}}`,
				`{"name":"bw","type":"bandwidth","stream":"downstream","attributes":{"rate":512}}`,
			} {
				if _, err := c.kafkaProxy.Toxics.AddToxicJson(strings.NewReader(doc)); err != nil {
					c.t.Fatal(err)
				}
			}
			<-p.done
			c.kafkaProxy.Toxics.ResetToxics(context.Background())
			return 0, "30ms±10 latency, 512 KB/s"
		}},
		{name: "mqtt-cut-5s", opts: chaosOpts{mqttProxy: true}, fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			p.atFraction(c.t, 0.3)
			c.mqttProxy.Stop()
			time.Sleep(5 * time.Second)
			if err := c.mqttProxy.Start(); err != nil {
				c.t.Fatal(err)
			}
			return p.recovered(c.t), "bridge<->mosquitto cut 5s"
		}},
		{name: "mosquitto-sigterm", fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			p.atFraction(c.t, 0.3)
			if err := c.mq.p.Stop(10 * time.Second); err != nil {
				c.t.Errorf("mosquitto stop: %v", err)
			}
			c.mq.start()
			return p.recovered(c.t), "restart with persistence"
		}},
		{name: "mosquitto-sigkill", allowLoss: true, fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			p.atFraction(c.t, 0.3)
			// Mosquitto loses what changed since its last save (every
			// second). Killed at a random point, every message in flight
			// (40 here, a tenth of a second of traffic) can be newer than
			// the save, and in the first second the bridge's session too:
			// then no device has a request or reply left that moves, and
			// the simulated devices (no request timeout) wait for ever (CI,
			// once, killed 0.4 s after the bridge subscribed). Killed just
			// after a save, it loses what came in since (milliseconds of
			// traffic), which is what this scenario measures.
			c.mq.saved(time.Now())
			c.mq.p.Kill()
			c.mq.start()
			return p.recovered(c.t), "autosave_interval 1s"
		}},
		// One request outstanding per device: a shared subscription spreads a
		// device's messages over both bridges, so only then is their order
		// defined (with more, two bridges may write them to Kafka crosswise).
		// A slow backend keeps the run going through several join/leave cycles.
		{name: "two-bridges-join-leave", opts: chaosOpts{shared: true, payArgs: []string{"-delay", delay.String()}, devices: func(d *devicesim.Config) { d.Outstanding = 1 }}, fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			o := c.bridgeOpts
			o.clientID = "bridge-2"
			cfg2, admin2 := writeBridgeConfig(c.t, o)
			stopPoll := make(chan struct{})
			var back []string
			var pwg sync.WaitGroup
			pwg.Go(func() { back = c.pollCommits(stopPoll) })
			cycles := 0
		loop:
			for {
				b2 := startBridge(c.t, cfg2, admin2)
				select {
				case <-p.done:
					_ = b2.Stop(30 * time.Second)
					break loop
				case <-time.After(period):
				}
				if err := b2.Stop(30 * time.Second); err != nil {
					c.t.Errorf("bridge-2 stop: %v", err)
				}
				cycles++
				select {
				case <-p.done:
					break loop
				case <-time.After(period):
				}
			}
			close(stopPoll)
			pwg.Wait()
			for _, b := range back {
				c.t.Error(b)
			}
			return 0, fmt.Sprintf("bridge-2 joined and left %d times every %s; commits never moved back", cycles, period)
		}},
		{name: "burst-slow-backend", opts: chaosOpts{payArgs: []string{"-delay", "1ms"}, devices: func(d *devicesim.Config) {
			d.Outstanding = d.Requests // every request at once: far beyond the in-flight limits
		}}, check: noBrokerDrops},
		{name: "poison-mixed-in", fault: func(c *chaosRig, p *progress) (time.Duration, string) {
			n := poison(c, p)
			return 0, fmt.Sprintf("%d poison messages: all in the DLQ, each device told", n)
		}},
	}
}

// noBrokerDrops asserts Mosquitto dropped no message (its queue limits).
func noBrokerDrops(t *testing.T, c *chaosRig, _ report) {
	n, err := c.mq.dropped()
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("mosquitto dropped %d messages, want 0", n)
	}
}

// committedOnce waits until the current bridge committed an offset; false
// if the devices finished first.
func (c *chaosRig) committedOnce(p *progress) bool {
	for {
		if n, err := c.bridge.Metric("edgebridge_kafka_commits_total"); err == nil && n > 0 {
			return true
		}
		select {
		case <-p.done:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pollCommits watches the group's committed offsets until stop and returns
// every time one moved backwards.
func (c *chaosRig) pollCommits(stop <-chan struct{}) []string {
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(c.kafkaAddr), Transport: tr, Timeout: 5 * time.Second}
	last := map[int]int64{}
	var back []string
	parts := []int{0, 1, 2, 3, 4, 5, 6, 7}
	for {
		select {
		case <-stop:
			return back
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: "edgebridge", Topics: map[string][]int{"edgebridge.payment.requests": parts}})
		if err != nil {
			continue
		}
		for _, pr := range resp.Topics["edgebridge.payment.requests"] {
			if pr.CommittedOffset < 0 {
				continue
			}
			if prev, ok := last[pr.Partition]; ok && pr.CommittedOffset < prev {
				back = append(back, fmt.Sprintf("partition %d: committed offset moved back from %d to %d", pr.Partition, prev, pr.CommittedOffset))
			}
			last[pr.Partition] = max(last[pr.Partition], pr.CommittedOffset)
		}
	}
}

// poison publishes bad payloads from one extra device while the others run
// and checks each got a REJECTED reply and a DLQ record.
func poison(c *chaosRig, p *progress) int {
	t := c.t
	bad := []string{`{not json`, `{"amount_minor":100,"currency":"EUR"}`, `{"request_id":"p","amount_minor":-5,"currency":"EUR"}`, `{"request_id":"q","amount_minor":5,"currency":"XXZ"}`}
	n := 20
	if chaosFull() {
		n = 100
	}
	replies := make(chan string, n)
	dev := paho.NewClient(paho.NewClientOptions().AddBroker(c.mq.url()).SetClientID("poison-1").SetCleanSession(false))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("poison device: %v", tok.Error())
	}
	defer dev.Disconnect(0)
	dev.Subscribe("payment/response/poison-1", 1, func(_ paho.Client, m paho.Message) {
		var r struct{ Status string }
		_ = json.Unmarshal(m.Payload(), &r)
		replies <- r.Status
	}).Wait()
	p.atFraction(t, 0.1)
	for i := range n {
		if tok := dev.Publish("payment/request/poison-1", 1, false, bad[i%len(bad)]); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("poison publish: %v", tok.Error())
		}
	}
	for i := range n {
		select {
		case s := <-replies:
			if s != "REJECTED" {
				t.Errorf("poison reply %d: got %q, want REJECTED", i, s)
			}
		case <-time.After(time.Minute):
			t.Fatalf("got %d of %d poison replies", i, n)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.kafkaAddr), kgo.ConsumeTopics("edgebridge.payment.dlq"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reasons := map[string]int{}
	got := 0
	for got < n && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			got++
			for _, h := range r.Headers {
				if h.Key == "edgebridge-dlq-reason" {
					reasons[string(h.Value)]++
				}
			}
		})
	}
	if got != n {
		t.Errorf("got %d DLQ records, want %d", got, n)
	}
	t.Logf("DLQ reasons: %v", reasons)
	return n
}
