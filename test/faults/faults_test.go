package faults

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/grpcout"
)

// The backend is killed mid-run and restarted on the same port after the
// bridge has failed to reconnect a few times.
func TestBackendKilledAndRestarted(t *testing.T) {
	leakCheck(t)
	r := newRig(t, rigOpts{})
	r.startBridge()
	b := r.backends[0]
	res := r.run(500, func() {
		killed := time.Now()
		b.kill()
		r.events.waitEvent(t, "stream down", killed, 10*time.Second, func(e grpcout.Event) bool { return e.Kind == grpcout.StreamDown })
		r.events.waitEvent(t, "a refused reconnect", killed, 10*time.Second, down(grpcout.ReasonUnavailable))
		restarted := time.Now()
		b.start()
		upAt := r.events.waitEvent(t, "stream up again", restarted, 10*time.Second, up(""))
		t.Logf("backend down %s; stream up %s after the restart", restarted.Sub(killed).Round(time.Millisecond), upAt.At.Sub(restarted).Round(time.Millisecond))
	})
	r.check(res, true)
}

// The backend's handler blocks longer than the heartbeat timeout: pongs
// still flow (the stream is alive, only slow), so no heartbeat failure; it
// blocks past the ACK deadline too, so the stream is replaced and the
// delivery resent, and the dedup store keeps it one processing.
func TestBackendFrozen(t *testing.T) {
	leakCheck(t)
	gate := make(chan struct{})
	var once sync.Once
	freeze := make(chan struct{})
	r := newRig(t, rigOpts{wrap: func(next backend.Handler) backend.Handler {
		return func(ctx context.Context, env *v1.Envelope) backend.Result {
			select {
			case <-freeze:
				<-gate
			default:
			}
			return next(ctx, env)
		}
	}})
	r.startBridge()
	res := r.run(500, func() {
		frozen := time.Now()
		once.Do(func() { close(freeze) })
		e := r.events.waitEvent(t, "ACK deadline", frozen, 10*time.Second, down(grpcout.ReasonAckTimeout))
		t.Logf("frozen backend detected by the ACK deadline (%s) after %s", r.cfg.Backend.AckTimeout, e.At.Sub(frozen).Round(time.Millisecond))
		if _, hb := r.events.First(frozen, down(grpcout.ReasonHeartbeat)); hb {
			t.Error("a slow but answering backend was declared dead by the heartbeat")
		}
		close(gate)
	})
	r.check(res, true)
}

// The connection is black-holed (half-open: nothing flows, nothing
// closes): the heartbeat declares the stream dead within its timeout plus
// one check period; after the network heals everything is delivered.
func TestHalfOpenConnection(t *testing.T) {
	leakCheck(t)
	r := newRig(t, rigOpts{})
	r.startBridge()
	b := r.backends[0]
	res := r.run(500, func() {
		holed := time.Now()
		heal := b.toxic("timeout", `{"timeout":0}`)
		e := r.events.waitEvent(t, "heartbeat timeout", holed, 10*time.Second, down(grpcout.ReasonHeartbeat))
		detect := e.At.Sub(holed)
		bound := r.cfg.Backend.Heartbeat.Timeout + r.cfg.Backend.Heartbeat.Timeout/10
		t.Logf("half-open stream detected after %s (bound %s)", detect.Round(time.Millisecond), bound)
		// Scheduling on a loaded 2-core machine may add some slack.
		if detect > bound+500*time.Millisecond {
			t.Errorf("detection took %s, want within %s", detect, bound)
		}
		healed := time.Now()
		heal()
		upAt := r.events.waitEvent(t, "stream up after healing", healed, 10*time.Second, up(""))
		t.Logf("recovered %s after the network healed", upAt.At.Sub(healed).Round(time.Millisecond))
	})
	r.check(res, true)
}

// The connection is reset (TCP RST) mid-run.
func TestConnectionReset(t *testing.T) {
	leakCheck(t)
	r := newRig(t, rigOpts{})
	r.startBridge()
	b := r.backends[0]
	res := r.run(500, func() {
		reset := time.Now()
		clear := b.toxic("reset_peer", `{"timeout":0}`, "downstream")
		e := r.events.waitEvent(t, "stream reset", reset, 10*time.Second, down(grpcout.ReasonNetwork))
		clear()
		upAt := r.events.waitEvent(t, "stream up after the reset", e.At, 10*time.Second, up(""))
		t.Logf("reset detected after %s, stream up %s later", e.At.Sub(reset).Round(time.Millisecond), upAt.At.Sub(e.At).Round(time.Millisecond))
	})
	r.check(res, true)
}

// 40ms of added latency each way for the whole run: slower, never wrong,
// and the heartbeat measures it.
func TestAddedLatency(t *testing.T) {
	leakCheck(t)
	r := newRig(t, rigOpts{})
	b := r.backends[0]
	b.toxic("latency", `{"latency":40,"jitter":10}`)
	r.startBridge()
	res := r.run(0, nil)
	r.check(res, true)
	var rtt time.Duration
	for _, e := range r.events.Of(grpcout.Pong) {
		rtt = max(rtt, e.RTT)
	}
	if rtt < 60*time.Millisecond {
		t.Errorf("got max heartbeat RTT %s, want >= 60ms with 2 x 40ms added", rtt)
	}
}

// The backend closes every connection after 300ms (MaxConnectionAge):
// GOAWAY after GOAWAY, the bridge drains each stream and moves on.
func TestMaxConnectionAge(t *testing.T) {
	leakCheck(t)
	r := newRig(t, rigOpts{serverOpts: []grpc.ServerOption{grpc.KeepaliveParams(keepalive.ServerParameters{
		MaxConnectionAge: 300 * time.Millisecond, MaxConnectionAgeGrace: 5 * time.Second,
	})}})
	r.startBridge()
	res := r.run(0, nil)
	r.check(res, true)
	if n := r.events.Reasons()[grpcout.ReasonGoAway]; n < 2 {
		t.Errorf("got %d goaway stream ends, want several", n)
	}
}

// The backend drains and stops gracefully mid-run, then comes back: the
// bridge stops sending, collects the outstanding ACKs (so GracefulStop
// returns), and resumes on the new server.
func TestGracefulStopWithDrain(t *testing.T) {
	leakCheck(t)
	r := newRig(t, rigOpts{})
	r.startBridge()
	b := r.backends[0]
	res := r.run(500, func() {
		stopping := time.Now()
		b.gracefulStop()
		t.Logf("GracefulStop returned after %s", time.Since(stopping).Round(time.Millisecond))
		r.events.waitEvent(t, "the stream ended by drain", stopping, 10*time.Second, func(e grpcout.Event) bool {
			return e.Kind == grpcout.StreamDown && (e.Reason == grpcout.ReasonDrain || e.Reason == grpcout.ReasonGoAway)
		})
		restarted := time.Now()
		b.start()
		r.events.waitEvent(t, "stream up again", restarted, 10*time.Second, up(""))
	})
	r.check(res, true)
}

// The backend grants 4 credits: never more than 4 un-ACKed deliveries at
// the backend. It then pauses the bridge (0 credits: nothing is sent and
// the bridge stops fetching once its window is full), shrinks to 1 and
// grows to 16.
func TestCredits(t *testing.T) {
	leakCheck(t)
	slow := func(next backend.Handler) backend.Handler {
		return func(ctx context.Context, env *v1.Envelope) backend.Result {
			time.Sleep(200 * time.Microsecond) // keep deliveries queued at the backend
			return next(ctx, env)
		}
	}
	r := newRig(t, rigOpts{credits: 4, wrap: slow})
	r.startBridge()
	b := r.backends[0]
	res := r.run(500, func() {
		if _, peak, _ := b.stats.snapshot(); peak > 4 || peak < 2 {
			t.Errorf("with 4 credits: got at most %d un-ACKed at the backend, want 2..4", peak)
		}
		// Pause: the backend gets nothing more, the window fills and stays full.
		paused := time.Now()
		b.server().SetCredits(0)
		r.events.waitEvent(t, "the bridge told to pause", paused, 10*time.Second, func(e grpcout.Event) bool { return e.Kind == grpcout.Credit && e.Credits == 0 })
		// Deliveries the bridge sent before it was told are still on the
		// wire: wait until the backend has them all, and ACKed them.
		waitFor(t, "paused", 10*time.Second, func() bool {
			now, _, total := b.stats.snapshot()
			return now == 0 && total == sentDeliveries(r)
		})
		_, _, before := b.stats.snapshot()
		window := r.cfg.Backend.Window
		waitFor(t, "the window full while paused", 10*time.Second, func() bool { return r.bridge.Metrics() != nil && windowInFlight(r) >= window })
		if _, _, after := b.stats.snapshot(); after != before {
			t.Errorf("got %d deliveries while paused, want 0", after-before)
		}
		if got := windowInFlight(r); got > window {
			t.Errorf("got %d records fetched while paused, want at most the window %d", got, window)
		}
		// Shrink to 1: once settled, never more than 1.
		b.server().SetCredits(1)
		waitFor(t, "one in flight", 10*time.Second, func() bool { _, _, total := b.stats.snapshot(); return total > before+50 })
		b.stats.reset()
		waitFor(t, "more deliveries", 10*time.Second, func() bool { _, _, total := b.stats.snapshot(); return total > before+150 })
		if _, peak, _ := b.stats.snapshot(); peak > 1 {
			t.Errorf("with 1 credit: got %d un-ACKed at the backend, want 1", peak)
		}
		// Grow to 16: more than 4 at once now.
		b.server().SetCredits(16)
		b.stats.reset()
		waitFor(t, "more than 4 in flight", 10*time.Second, func() bool { _, peak, _ := b.stats.snapshot(); return peak > 4 })
	})
	r.check(res, true)
	if _, peak, _ := b.stats.snapshot(); peak > 16 {
		t.Errorf("with 16 credits: got %d un-ACKed, want <= 16", peak)
	}
}

// sentDeliveries is how many deliveries the bridge has sent, to every backend.
func sentDeliveries(r *rig) int {
	mfs, err := r.bridge.Metrics().Registry.Gather()
	if err != nil {
		return -1
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == "edgebridge_grpc_stream_deliveries_total" {
			for _, m := range mf.GetMetric() {
				n += int(m.GetCounter().GetValue())
			}
		}
	}
	return n
}

func windowInFlight(r *rig) int {
	mfs, err := r.bridge.Metrics().Registry.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() == "edgebridge_window_in_flight" {
			return int(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	return 0
}

// The backend answers RETRY twice for every 7th request (then processes
// it) and REJECT for every 11th: retried ones end APPROVED/DECLINED after
// three handler calls, rejected ones are in the DLQ with the structured
// code and the device got REJECTED.
func TestRetryAndReject(t *testing.T) {
	leakCheck(t)
	var mu sync.Mutex
	calls := map[string]int{}
	r := newRig(t, rigOpts{wrap: func(next backend.Handler) backend.Handler {
		return func(ctx context.Context, env *v1.Envelope) backend.Result {
			n := requestNumber(env)
			mu.Lock()
			calls[env.MessageId]++
			c := calls[env.MessageId]
			mu.Unlock()
			switch {
			case n%11 == 5:
				return backend.Result{Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_NOT_PERMITTED, Reason: "merchant not enrolled"}
			case n%7 == 3 && c <= 2:
				return backend.Result{Outcome: v1.Outcome_OUTCOME_RETRY, Code: v1.ReasonCode_REASON_CODE_BUSY}
			}
			return next(ctx, env)
		}
	}})
	r.startBridge()
	res := r.run(0, nil)
	r.check(res, false) // a retried request is processed after later ones of its device
	rejects, retries := 0, 0
	for n := range requests {
		switch {
		case n%11 == 5:
			rejects++
		case n%7 == 3:
			retries++
		}
	}
	rejects, retries = rejects*devices, retries*devices
	if got := res.ByStatus["REJECTED"]; got != rejects {
		t.Errorf("got %d REJECTED replies, want %d", got, rejects)
	}
	mu.Lock()
	thrice := 0
	for _, c := range calls {
		if c == 3 {
			thrice++
		}
	}
	mu.Unlock()
	if thrice != retries {
		t.Errorf("got %d requests handled 3 times, want %d (RETRY, RETRY, OK)", thrice, retries)
	}
	for _, rec := range r.records(r.cfg.Kafka.DLQTopic, rejects) {
		if got := header(rec, "edgebridge-dlq-reason"); got != "not_permitted" {
			t.Fatalf("DLQ record reason %q, want not_permitted", got)
		}
	}
}

// The backend processes in order but ACKs out of order and never ACKs a
// few messages; then it is killed, then the bridge is stopped: every
// partition's committed offset is exactly its contiguous ACKed prefix. A restarted bridge redelivers
// from there and a normal backend finishes the run: nothing lost, nothing
// processed twice.
func TestOutOfOrderAcksThenStop(t *testing.T) {
	leakCheck(t)
	// Never ACKed by the first backend. A record nobody ACKs holds every
	// later record of its partition in the window (they are not committable
	// yet), so the window is sized for what comes after these late requests.
	withhold := map[string]bool{}
	for _, dev := range []int{2, 7, 13} {
		withhold[fmt.Sprintf("dev-%04d/r-%06d", dev, 90+dev%5)] = true
	}
	r := newRig(t, rigOpts{
		raw: func(b *testBackend) v1.DeliveryServer { return &reorderingBackend{b: b, withhold: withhold} },
		tweak: func(c *config.Config) {
			c.Backend.Window = 512
			c.Backend.AckTimeout = time.Minute
			c.Shutdown.DrainTimeout = 500 * time.Millisecond
		},
	})
	r.startBridge()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	counters, results := r.devices(ctx)
	want := int64(devices*requests - len(withhold))
	waitFor(t, "every reply but the withheld", time.Minute, func() bool {
		if n := counters.Replied.Load(); n > want {
			t.Fatalf("got %d replies, want %d: a withheld request was answered", n, want)
		}
		return counters.Replied.Load() == want
	})

	// Where each withheld message sits in Kafka, and where each partition ends.
	end := map[int]int64{}      // the next offset of each partition
	withheld := map[int]int64{} // the first withheld offset of each partition
	for _, rec := range r.records(r.cfg.Kafka.Topic, devices*requests) {
		p := int(rec.Partition)
		end[p] = max(end[p], rec.Offset+1)
		env := &v1.Envelope{}
		if err := proto.Unmarshal(rec.Value, env); err != nil {
			t.Fatal(err)
		}
		if first, ok := withheld[p]; withhold[env.DeviceId+"/"+env.RequestId] && (!ok || rec.Offset < first) {
			withheld[p] = rec.Offset
		}
	}
	floor := end // all ACKed: the end, else the first withheld record
	for p, off := range withheld {
		floor[p] = off
	}
	checkCommitted := func(when string) {
		t.Helper()
		got := r.committed(r.cfg.Kafka.Topic, 4)
		for p, want := range floor {
			if got[p] != want {
				t.Errorf("%s: partition %d: committed %d, want the contiguous prefix %d", when, p, got[p], want)
			}
		}
		t.Logf("%s: committed %v, floors %v", when, got, floor)
	}
	// The running bridge commits up to the prefix (every ACK is in).
	waitFor(t, "commits up to the prefix", 10*time.Second, func() bool {
		got := r.committed(r.cfg.Kafka.Topic, 4)
		for p, want := range floor {
			if got[p] != want {
				return false
			}
		}
		return true
	})
	// The backend is killed: the bridge keeps the un-ACKed, commits nothing past them.
	b := r.backends[0]
	killed := time.Now()
	b.kill()
	r.events.waitEvent(t, "stream down", killed, 10*time.Second, func(e grpcout.Event) bool { return e.Kind == grpcout.StreamDown })
	checkCommitted("backend killed")
	// The bridge is stopped as well.
	r.stop()
	checkCommitted("bridge stopped")

	// A normal backend on the same address, and the bridge again.
	b.raw = nil
	b.start()
	r.startBridge()
	res := <-results
	r.check(res, true)
}

// reorderingBackend ACKs in reversed batches and withholds some ACKs.
type reorderingBackend struct {
	v1.UnimplementedDeliveryServer
	b        *testBackend
	withhold map[string]bool
}

func (s *reorderingBackend) Stream(st v1.Delivery_StreamServer) error {
	if _, err := st.Recv(); err != nil {
		return err
	}
	if err := st.Send(&v1.ServerFrame{Frame: &v1.ServerFrame_Welcome{Welcome: &v1.Welcome{BackendId: "reordering"}}}); err != nil {
		return err
	}
	frames := make(chan *v1.ClientFrame, 64)
	go func() {
		defer close(frames)
		for {
			f, err := st.Recv()
			if err != nil {
				return
			}
			frames <- f
		}
	}()
	var batch []*v1.Ack
	flush := func() error {
		for i := len(batch) - 1; i >= 0; i-- {
			if err := st.Send(&v1.ServerFrame{Frame: &v1.ServerFrame_Ack{Ack: batch[i]}}); err != nil {
				return err
			}
		}
		batch = batch[:0]
		return nil
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				return nil
			}
			if p := f.GetPing(); p != nil {
				if err := st.Send(&v1.ServerFrame{Frame: &v1.ServerFrame_Pong{Pong: &v1.Pong{Seq: p.Seq, PingSentUnixNano: p.SentUnixNano}}}); err != nil {
					return err
				}
				continue
			}
			d := f.GetDeliver()
			if d == nil {
				continue
			}
			ack := s.b.process(st.Context(), d)
			if s.withhold[d.Envelope.DeviceId+"/"+d.Envelope.RequestId] {
				continue
			}
			if batch = append(batch, ack); len(batch) == 8 {
				if err := flush(); err != nil {
					return err
				}
			}
		case <-tick.C:
			if err := flush(); err != nil {
				return err
			}
		}
	}
}

// Two backends; one is killed mid-run and stays down: its partitions and
// its un-ACKed deliveries move to the other, in order.
func TestTwoBackendsOneKilled(t *testing.T) {
	leakCheck(t)
	r := newRig(t, rigOpts{backends: 2})
	r.startBridge()
	dead, alive := r.backends[0], r.backends[1]
	res := r.run(500, func() {
		if _, _, n := dead.stats.snapshot(); n == 0 {
			t.Error("the first backend got no deliveries before the kill")
		}
		killed := time.Now()
		dead.kill()
		e := r.events.waitEvent(t, "partitions moved", killed, 10*time.Second, func(e grpcout.Event) bool {
			return e.Kind == grpcout.Moved && e.Addr == alive.proxy.Listen
		})
		t.Logf("%d partitions moved to the live backend %s after the kill", e.Partitions, e.At.Sub(killed).Round(time.Millisecond))
	})
	r.check(res, true)
}

// One target name resolves to two addresses: a stream to each. When one
// address disappears from the name, its partitions move to the other.
func TestTargetResolvingToSeveralAddresses(t *testing.T) {
	leakCheck(t)
	var mu sync.Mutex
	var addrs []string
	resolve := func(context.Context, string) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(addrs), nil
	}
	r := newRig(t, rigOpts{backends: 2, poolOpts: []grpcout.Option{grpcout.WithResolver(resolve)}, tweak: func(c *config.Config) {
		c.Backend.ResolveInterval = 100 * time.Millisecond
	}})
	mu.Lock()
	for _, b := range r.backends {
		addrs = append(addrs, b.proxy.Listen)
	}
	mu.Unlock()
	r.cfg.Backend.Targets = []string{"backends.test:7070"}
	r.startBridge()
	first, second := r.backends[0], r.backends[1]
	res := r.run(500, func() {
		waitFor(t, "both addresses served", 10*time.Second, func() bool {
			_, _, a := first.stats.snapshot()
			_, _, b := second.stats.snapshot()
			return a > 0 && b > 0
		})
		removed := time.Now()
		mu.Lock()
		addrs = addrs[1:]
		mu.Unlock()
		r.events.waitEvent(t, "the removed address's stream closed", removed, 10*time.Second, down(grpcout.ReasonRemoved))
		r.events.waitEvent(t, "partitions moved", removed, 10*time.Second, func(e grpcout.Event) bool { return e.Kind == grpcout.Moved && e.Addr == second.proxy.Listen })
		// Frames sent before the stream closed may still be landing; after
		// that quiet period, the removed address must get nothing more.
		time.Sleep(200 * time.Millisecond)
		_, _, before := first.stats.snapshot()
		time.Sleep(300 * time.Millisecond)
		if _, _, after := first.stats.snapshot(); after != before {
			t.Errorf("the removed address got %d more deliveries", after-before)
		}
	})
	r.check(res, true)
}

// A REJECT whose ACK never reaches the bridge: the bridge resends the
// delivery after the ACK deadline, the backend answers with the stored
// REJECT (flagged duplicate, not re-run), and the bridge dead-letters it
// then. Each is in the DLQ once and its device got REJECTED; before the
// duplicate flag, the stored REJECT came back as DUPLICATE, was taken for
// an approval, and was neither dead-lettered nor answered.
func TestLostRejectAck(t *testing.T) {
	leakCheck(t)
	var mu sync.Mutex
	calls, dropped := map[string]int{}, map[string]bool{}
	rejects := func(env *v1.Envelope) bool {
		return requestNumber(env) == 3 && env.GetDeviceId() <= "dev-0005"
	}
	// Drops the first ACK of each REJECT, as a connection failing between
	// the backend's save and its ACK would.
	drop := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, &ackDropper{ServerStream: ss, drop: func(a *v1.Ack) bool {
			mu.Lock()
			defer mu.Unlock()
			if a.GetOutcome() != v1.Outcome_OUTCOME_REJECT || dropped[a.GetMessageId()] {
				return false
			}
			dropped[a.GetMessageId()] = true
			return true
		}})
	}
	r := newRig(t, rigOpts{
		wrap: func(next backend.Handler) backend.Handler {
			return func(ctx context.Context, env *v1.Envelope) backend.Result {
				mu.Lock()
				calls[env.MessageId]++
				mu.Unlock()
				if rejects(env) {
					return backend.Result{Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_NOT_PERMITTED, Reason: "card blocked"}
				}
				return next(ctx, env)
			}
		},
		serverOpts: []grpc.ServerOption{grpc.ChainStreamInterceptor(drop)},
		tweak:      func(c *config.Config) { c.Backend.AckTimeout = time.Second },
	})
	r.startBridge()
	res := r.run(0, nil)
	r.check(res, false)
	const want = 5
	if got := res.ByStatus["REJECTED"]; got != want {
		t.Errorf("got %d REJECTED replies, want %d", got, want)
	}
	mu.Lock()
	if len(dropped) != want {
		t.Errorf("dropped %d REJECT ACKs, want %d", len(dropped), want)
	}
	for id := range dropped {
		if calls[id] != 1 {
			t.Errorf("message %s handled %d times, want once (the redelivery is answered from the store)", id, calls[id])
		}
	}
	mu.Unlock()
	if got := testutil.ToFloat64(r.bridge.Metrics().DLQ.WithLabelValues("not_permitted")); got != want {
		t.Errorf("dead-lettered %v times, want %d (once each)", got, want)
	}
	seen := map[string]bool{}
	for _, rec := range r.records(r.cfg.Kafka.DLQTopic, want) {
		env := &v1.Envelope{}
		if err := proto.Unmarshal(rec.Value, env); err != nil || header(rec, "edgebridge-dlq-reason") != "not_permitted" {
			t.Fatalf("DLQ record %v: %v", rec.Headers, err)
		}
		if seen[env.MessageId] || !dropped[env.MessageId] {
			t.Errorf("DLQ record for %s: twice, or not one whose ACK was lost", env.MessageId)
		}
		seen[env.MessageId] = true
	}
}

// ackDropper swallows the ACKs drop picks: the backend believes it sent them.
type ackDropper struct {
	grpc.ServerStream
	drop func(*v1.Ack) bool
}

func (s *ackDropper) SendMsg(m any) error {
	if f, ok := m.(*v1.ServerFrame); ok && f.GetAck() != nil && s.drop(f.GetAck()) {
		return nil
	}
	return s.ServerStream.SendMsg(m)
}
