// Package faults drives the in-process bridge (embedded MQTT and Kafka
// brokers) against real gRPC backends reached through an in-process
// toxiproxy, injects faults on the gRPC hop, and checks that no request is
// lost, none is processed twice and per-device order holds.
//
// Each test sends at least 2,000 requests. Opt out with
// EDGEBRIDGE_SKIP_INTEGRATION=1 (CI never sets it).
package faults

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"google.golang.org/grpc"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/grpcout"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/kit/devicesim"
	kitrig "github.com/edgebridge/edgebridge/kit/rig"
	"github.com/edgebridge/edgebridge/payment"
	"github.com/edgebridge/edgebridge/transcoder"
)

// Devices x Requests is the load of every test.
const (
	devices  = 20
	requests = 100
)

func skipUnlessIntegration(t *testing.T) {
	if os.Getenv("EDGEBRIDGE_SKIP_INTEGRATION") == "1" {
		t.Skip("EDGEBRIDGE_SKIP_INTEGRATION=1")
	}
}

// rig is one test's brokers, backends (each behind its own proxy) and bridge.
type rig struct {
	t        *testing.T
	dir      string
	kafka    *embedded.Kafka
	mqtt     *embedded.MQTT
	ledger   *payment.Ledger
	lock     sync.Mutex // the backends' shared dedup lock
	toxi     *toxiproxy.ApiServer
	backends []*testBackend
	cfg      config.Config
	events   *eventLog
	poolOpts []grpcout.Option

	base   *kitrig.Rig // brokers and the node running the bridge
	bridge *bridge.Bridge
}

type rigOpts struct {
	backends int
	// wrap changes the backends' handler (default: the payment handler).
	wrap func(backend.Handler) backend.Handler
	// credits granted by the backends (0: the bridge's window).
	credits uint32
	// serverOpts for every backend's gRPC server.
	serverOpts []grpc.ServerOption
	// tweak adjusts the bridge config, then defaults are applied.
	tweak func(*config.Config)
	// raw, if set, serves the Delivery service instead of backend.Server.
	raw func(b *testBackend) v1.DeliveryServer
	// poolOpts go to the bridge's backend pool.
	poolOpts []grpcout.Option
}

func newRig(t *testing.T, o rigOpts) *rig {
	t.Helper()
	skipUnlessIntegration(t)
	base := kitrig.Test(t, kitrig.Partitions(4), kitrig.NoBackend())
	r := &rig{t: t, base: base, dir: base.Dir, kafka: base.Kafka, mqtt: base.MQTT, events: &eventLog{}}
	var err error
	r.ledger, err = payment.OpenLedger(filepath.Join(r.dir, "ledger.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.ledger.Close() })
	r.toxi = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())

	handler := payment.Handler(payment.DefaultLimit)
	if o.wrap != nil {
		handler = o.wrap(handler)
	}
	var targets []string
	for i := range max(o.backends, 1) {
		b := &testBackend{r: r, name: fmt.Sprintf("backend-%d", i), handler: handler, credits: o.credits, serverOpts: o.serverOpts, stats: &inflight{}, raw: o.raw}
		b.start()
		b.proxy = toxiproxy.NewProxy(r.toxi, b.name, "127.0.0.1:0", b.addr)
		if err := b.proxy.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Toxics first: a latency toxic's goroutines outlive a stopped proxy.
			b.proxy.Toxics.ResetToxics(context.Background())
			b.proxy.Stop()
		})
		t.Cleanup(b.kill)
		r.backends = append(r.backends, b)
		targets = append(targets, b.proxy.Listen)
	}

	c := base.Config
	c.MQTT.ClientID = "bridge-faults"
	c.Kafka.CommitInterval = 50 * time.Millisecond
	c.Backend.Targets = targets
	c.Backend.Window = 32
	c.Backend.RetryBackoff = 20 * time.Millisecond
	c.Backend.OpenTimeout = time.Second
	c.Backend.AckTimeout = 3 * time.Second
	c.Backend.Reconnect = config.Reconnect{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond, ResetAfter: 5 * time.Second}
	c.Backend.Heartbeat = config.Heartbeat{Interval: 200 * time.Millisecond, MinInterval: 100 * time.Millisecond, MaxInterval: 400 * time.Millisecond, Timeout: time.Second}
	c.Shutdown.DrainTimeout = 10 * time.Second
	if o.tweak != nil {
		o.tweak(&c)
	}
	c.ApplyDefaults()
	r.cfg = c
	r.poolOpts = o.poolOpts
	return r
}

// startBridge runs the bridge until stop or the end of the test, and waits
// until it is ready.
func (r *rig) startBridge() {
	r.t.Helper()
	r.startBridgeUnready()
	waitFor(r.t, "bridge ready", 30*time.Second, func() bool { ok, _ := r.bridge.Ready(); return ok })
}

// startBridgeUnready runs the bridge without waiting for it to be ready.
func (r *rig) startBridgeUnready() {
	r.t.Helper()
	r.base.Config = r.cfg
	r.bridge = r.base.StartUnreadyTest(r.t, bridge.WithPoolOptions(append(r.poolOpts, grpcout.WithEventHook(r.events.Hook))...))
}

// stop stops the bridge gracefully and waits for it.
func (r *rig) stop() {
	if err := r.base.Stop(); err != nil {
		r.t.Errorf("bridge Run: %v", err)
	}
}

// devices runs the simulated devices in the background.
func (r *rig) devices(ctx context.Context) (*devicesim.Counters, <-chan devicesim.Result) {
	counters := &devicesim.Counters{}
	out := make(chan devicesim.Result, 1)
	go func() {
		res, err := devicesim.Run(ctx, devicesim.Config{Broker: "tcp://" + r.mqtt.Addr(), Devices: devices, Requests: requests, Counters: counters}, nil)
		if err != nil {
			res.Missing = append(res.Missing, "devices failed: "+err.Error())
		}
		out <- res
	}()
	return counters, out
}

// run drives all devices to completion while fault runs once replied
// reaches after; it returns the devices' result.
func (r *rig) run(after int, fault func()) devicesim.Result {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	counters, results := r.devices(ctx)
	if fault != nil {
		waitFor(r.t, fmt.Sprintf("%d replies before the fault", after), time.Minute, func() bool { return counters.Replied.Load() >= int64(after) })
		fault()
	}
	return <-results
}

// check asserts every request was answered, processed exactly once, and
// (if order) processed in publish order per device.
func (r *rig) check(res devicesim.Result, order bool) {
	r.t.Helper()
	if len(res.Missing) > 0 {
		r.t.Errorf("lost: %d requests got no reply, e.g. %v", len(res.Missing), res.Missing[:min(5, len(res.Missing))])
	}
	if res.Sent != devices*requests {
		r.t.Errorf("sent %d, want %d", res.Sent, devices*requests)
	}
	if err := r.ledger.Sync(); err != nil {
		r.t.Fatal(err)
	}
	entries, err := payment.ReadLedger(filepath.Join(r.dir, "ledger.jsonl"))
	if err != nil {
		r.t.Fatal(err)
	}
	a := devicesim.AuditLedger(entries)
	if a.Twice != 0 {
		r.t.Errorf("processed twice: %d, want 0", a.Twice)
	}
	if len(a.Processed) != devices*requests {
		r.t.Errorf("processed %d distinct requests, want %d", len(a.Processed), devices*requests)
	}
	if order && a.Reordered != 0 {
		r.t.Errorf("per-device order broken %d times at the backend, want 0", a.Reordered)
	}
	r.t.Logf("sent %d, replied %d, processed %d, twice %d, reordered %d, reconnects %v, p50 %s p99 %s",
		res.Sent, res.Replied, len(a.Processed), a.Twice, a.Reordered, r.events.Reasons(), res.Percentile(50), res.Percentile(99))
}

// testBackend is a backend.Server on a fixed loopback port behind a proxy.
type testBackend struct {
	r          *rig
	name       string
	addr       string // its own listen address; the bridge dials proxy.Listen
	handler    backend.Handler
	credits    uint32
	serverOpts []grpc.ServerOption
	stats      *inflight
	proxy      *toxiproxy.Proxy
	raw        func(*testBackend) v1.DeliveryServer

	mu   sync.Mutex
	srv  *backend.Server
	gs   *grpc.Server
	done chan struct{}
}

func (b *testBackend) start() {
	b.r.t.Helper()
	addr := b.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.r.t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	srv := backend.NewServer(backend.Config{ID: b.name, Credits: b.credits}, b.handler, b.r.ledger,
		backend.WithDedupLock(&b.r.lock), backend.WithLogger(slog.New(slog.DiscardHandler)))
	gs := backend.NewGRPCServer(append([]grpc.ServerOption{grpc.ChainStreamInterceptor(b.stats.interceptor)}, b.serverOpts...)...)
	if b.raw != nil {
		v1.RegisterDeliveryServer(gs, b.raw(b))
	} else {
		srv.Register(gs)
	}
	done := make(chan struct{})
	go func() { _ = gs.Serve(ln); close(done) }()
	b.mu.Lock()
	b.srv, b.gs, b.done = srv, gs, done
	b.mu.Unlock()
}

// kill stops the server abruptly: connections close, nothing is drained.
func (b *testBackend) kill() {
	b.mu.Lock()
	gs, done := b.gs, b.done
	b.gs = nil
	b.mu.Unlock()
	if gs != nil {
		gs.Stop()
		<-done
	}
}

// gracefulStop drains the bridges and stops when their streams have ended.
func (b *testBackend) gracefulStop() {
	b.mu.Lock()
	srv, gs, done := b.srv, b.gs, b.done
	b.gs = nil
	b.mu.Unlock()
	srv.Drain("test: graceful stop")
	gs.GracefulStop()
	<-done
}

func (b *testBackend) server() *backend.Server {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.srv
}

// toxic adds a toxic to the backend's proxy (both directions unless stream
// is set) and returns a function that removes it.
func (b *testBackend) toxic(kind string, attrs string, streams ...string) (remove func()) {
	b.r.t.Helper()
	if len(streams) == 0 {
		streams = []string{"upstream", "downstream"}
	}
	var names []string
	for _, s := range streams {
		name := kind + "_" + s
		doc := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"attributes":%s}`, name, kind, s, attrs)
		if _, err := b.proxy.Toxics.AddToxicJson(strings.NewReader(doc)); err != nil {
			b.r.t.Fatal(err)
		}
		names = append(names, name)
	}
	return func() {
		for _, n := range names {
			_ = b.proxy.Toxics.RemoveToxic(context.Background(), n)
		}
	}
}

// inflight counts deliveries a backend received and has not yet ACKed,
// across its streams, and the most seen since reset. It wraps the server
// stream (not a stats handler, which sees a sent ACK only after the write,
// so the next delivery could be counted before the ACK that allowed it).
type inflight struct {
	mu       sync.Mutex
	now, max int
	total    int
}

func (s *inflight) reset() {
	s.mu.Lock()
	s.max = s.now
	s.mu.Unlock()
}

func (s *inflight) snapshot() (now, peak, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now, s.max, s.total
}

func (s *inflight) interceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, &countingStream{ServerStream: ss, s: s})
}

type countingStream struct {
	grpc.ServerStream
	s *inflight
}

func (c *countingStream) RecvMsg(m any) error {
	err := c.ServerStream.RecvMsg(m)
	if f, ok := m.(*v1.ClientFrame); ok && err == nil && f.GetDeliver() != nil {
		c.s.mu.Lock()
		c.s.now++
		c.s.total++
		c.s.max = max(c.s.max, c.s.now)
		c.s.mu.Unlock()
	}
	return err
}

func (c *countingStream) SendMsg(m any) error {
	if f, ok := m.(*v1.ServerFrame); ok && f.GetAck() != nil {
		c.s.mu.Lock()
		c.s.now--
		c.s.mu.Unlock()
	}
	return c.ServerStream.SendMsg(m)
}

// eventLog records the bridge's stream events with their times.
// eventLog is the bridge's pool events.
type eventLog struct{ kitrig.PoolEvents }

// waitEvent waits for the first matching event after t.
func (l *eventLog) waitEvent(t *testing.T, what string, after time.Time, timeout time.Duration, match func(grpcout.Event) bool) kitrig.PoolEvent {
	t.Helper()
	var got kitrig.PoolEvent
	waitFor(t, what, timeout, func() bool {
		var ok bool
		got, ok = l.First(after, match)
		return ok
	})
	return got
}

func down(r grpcout.Reason) func(grpcout.Event) bool {
	return func(e grpcout.Event) bool { return e.Kind == grpcout.StreamDown && e.Reason == r }
}

func up(addr string) func(grpcout.Event) bool {
	return func(e grpcout.Event) bool { return e.Kind == grpcout.StreamUp && (addr == "" || e.Addr == addr) }
}

// waitFor checks cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	await.True(t, timeout, what, cond)
}

// requestNumber is n of request id r-%06d.
func requestNumber(env *v1.Envelope) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(env.GetRequestId(), "r-"))
	return n
}

// leakCheck verifies at the end of a test that no goroutine it started is
// still running (toxiproxy's and the brokers' included).
func leakCheck(t *testing.T) {
	opts := []goleak.Option{goleak.IgnoreCurrent(),
		// toxiproxy's own link goroutines can linger on a closed link after
		// its proxy stopped (a stub that has returned, or a link's reader
		// blocked sending to it); they are the fault injector's, not the
		// bridge's.
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run"),
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*ToxicLink).read")}
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

// records reads topic from the start until n records arrived.
func (r *rig) records(topic string, n int) []*kgo.Record {
	r.t.Helper()
	return r.base.RecordsTest(r.t, topic, n)
}

func header(rec *kgo.Record, key string) string {
	for _, h := range rec.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// committed returns the group's committed offset of each partition of topic.
func (r *rig) committed(topic string, partitions int) map[int]int64 {
	r.t.Helper()
	ids := make([]int, partitions)
	for i := range ids {
		ids[i] = i
	}
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(r.kafka.Addr()), Transport: tr}
	resp, err := c.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: r.cfg.Kafka.GroupID, Topics: map[string][]int{topic: ids}})
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// process is what backend.Server does for one delivery, for raw test
// backends: dedup by message id against the shared ledger, else handle,
// save and sync.
func (b *testBackend) process(ctx context.Context, d *v1.Deliver) *v1.Ack {
	env := d.GetEnvelope()
	ack := &v1.Ack{Seq: d.GetSeq(), MessageId: env.GetMessageId()}
	b.r.lock.Lock()
	defer b.r.lock.Unlock()
	if res, ok := b.r.ledger.Lookup(env.GetMessageId()); ok {
		ack.Outcome, ack.Reply = v1.Outcome_OUTCOME_DUPLICATE, res.Reply
		return ack
	}
	res := b.handler(ctx, env)
	if err := b.r.ledger.Save(env, res); err != nil {
		b.r.t.Error(err)
	}
	if err := b.r.ledger.Sync(); err != nil {
		b.r.t.Error(err)
	}
	ack.Outcome, ack.Code, ack.Reason, ack.Reply = res.Outcome, res.Code, res.Reason, res.Reply
	return ack
}

var _ = transcoder.CodeName
