package grpcout_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/grpcout"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/kit/grpctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs srv on a loopback port until the test ends.
func serve(t *testing.T, register func(grpc.ServiceRegistrar)) string {
	t.Helper()
	return grpctest.Serve(t, backend.NewGRPCServer(), register)
}

// run starts c.Run until the test ends and waits for it at cleanup.
func run(t *testing.T, c *grpcout.Pool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// env is request i of device "d": a valid envelope (the backend helper
// refuses others).
func env(i int) *v1.Envelope {
	id := fmt.Sprintf("r-%04d", i)
	return &v1.Envelope{MessageId: v1.MessageID("d", id), DeviceId: "d", RequestId: id}
}

// acks collects ACKs by message id.
type acks struct {
	mu   sync.Mutex
	got  map[string][]*v1.Ack
	all  chan struct{}
	want int
}

func newAcks(want int) *acks {
	return &acks{got: map[string][]*v1.Ack{}, all: make(chan struct{}), want: want}
}

func (a *acks) fn(id string) grpcout.AckFunc {
	return func(ack *v1.Ack) error {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.got[id] = append(a.got[id], ack)
		if len(a.got) == a.want && len(a.got[id]) == 1 {
			close(a.all)
		}
		return nil
	}
}

func (a *acks) wait(t *testing.T) {
	t.Helper()
	select {
	case <-a.all:
	case <-time.After(20 * time.Second):
		a.mu.Lock()
		defer a.mu.Unlock()
		t.Fatalf("got %d acked messages, want %d", len(a.got), a.want)
	}
}

func deliverAll(t *testing.T, c *grpcout.Pool, n int, a *acks) {
	t.Helper()
	for i := range n {
		e := env(i)
		c.Deliver(0, e, a.fn(e.MessageId))
	}
}

func TestDeliverWithBackendHelper(t *testing.T) {
	var calls atomic.Int64
	srv := backend.NewServer(backend.Config{}, func(_ context.Context, e *v1.Envelope) backend.Result {
		calls.Add(1)
		return backend.Result{Outcome: v1.Outcome_OUTCOME_OK, RawReply: []byte("reply-" + e.MessageId)}
	}, nil)
	addr := serve(t, srv.Register)
	c, err := grpcout.New(grpcout.Config{Targets: []string{addr}, Window: 16})
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	a := newAcks(500)
	deliverAll(t, c, 500, a)
	a.wait(t)
	for id, got := range a.got {
		if len(got) != 1 || got[0].Outcome != v1.Outcome_OUTCOME_OK || string(got[0].RawReply) != "reply-"+id {
			t.Fatalf("message %s: got acks %v", id, got)
		}
	}
	if calls.Load() != 500 {
		t.Fatalf("got %d handler calls, want 500", calls.Load())
	}
	// A redelivery of a processed message is answered with the stored
	// outcome and reply, flagged as a duplicate.
	dup := newAcks(1)
	id := env(7).MessageId
	c.Deliver(0, env(7), dup.fn(id))
	dup.wait(t)
	if got := dup.got[id][0]; got.Outcome != v1.Outcome_OUTCOME_OK || !got.Duplicate || string(got.RawReply) != "reply-"+id {
		t.Fatalf("got %v, want OK flagged duplicate with the stored reply", got)
	}
	if calls.Load() != 500 {
		t.Fatalf("handler ran again for a duplicate: %d calls", calls.Load())
	}
}

// rawServer is a hand-written backend for protocol corner cases.
type rawServer struct {
	v1.UnimplementedDeliveryServer
	stream func(v1.Delivery_StreamServer) error
}

func (r *rawServer) Stream(s v1.Delivery_StreamServer) error { return r.stream(s) }

// welcome answers hello with a grant of credits; 0 grants the bridge's window.
func welcome(s v1.Delivery_StreamServer, credits uint32) error {
	if _, err := s.Recv(); err != nil { // hello
		return err
	}
	w := &v1.Welcome{}
	if credits > 0 {
		w.Credits = &credits
	}
	return s.Send(&v1.ServerFrame{Frame: &v1.ServerFrame_Welcome{Welcome: w}})
}

// eachDelivery receives frames on s until the stream ends (nil) and calls
// handle with each delivery; handle's error ends the stream with it.
func eachDelivery(s v1.Delivery_StreamServer, handle func(d *v1.Deliver) error) error {
	for {
		f, err := s.Recv()
		if err != nil {
			return nil
		}
		if d := f.GetDeliver(); d != nil {
			if err := handle(d); err != nil {
				return err
			}
		}
	}
}

func ackFrame(d *v1.Deliver) *v1.ServerFrame {
	return &v1.ServerFrame{Frame: &v1.ServerFrame_Ack{Ack: &v1.Ack{Seq: d.Seq, MessageId: d.Envelope.MessageId, Outcome: v1.Outcome_OUTCOME_OK}}}
}

func TestOutOfOrderAcks(t *testing.T) {
	addr := serve(t, func(gs grpc.ServiceRegistrar) {
		v1.RegisterDeliveryServer(gs, &rawServer{stream: func(s v1.Delivery_StreamServer) error {
			if err := welcome(s, 0); err != nil {
				return err
			}
			var batch []*v1.Deliver
			for {
				f, err := s.Recv()
				if err != nil {
					return nil
				}
				if d := f.GetDeliver(); d != nil {
					batch = append(batch, d)
				}
				if len(batch) == 8 { // ACK each batch of 8 in reverse order
					for i := len(batch) - 1; i >= 0; i-- {
						if err := s.Send(ackFrame(batch[i])); err != nil {
							return err
						}
					}
					batch = batch[:0]
				}
			}
		}})
	})
	c, _ := grpcout.New(grpcout.Config{Targets: []string{addr}, Window: 8})
	run(t, c)
	a := newAcks(64)
	deliverAll(t, c, 64, a)
	a.wait(t)
	for id, got := range a.got {
		if len(got) != 1 || got[0].MessageId != id {
			t.Fatalf("message %s: got %v", id, got)
		}
	}
}

// A backend that ACKs seqs it was never sent, names another message in an
// ACK, or sends outcome and code numbers the bridge does not know: each is
// reported under a fixed problem; only the ACK that matches its delivery
// is applied, once.
func TestProtocolErrorsReportedNotApplied(t *testing.T) {
	addr := serve(t, func(gs grpc.ServiceRegistrar) {
		v1.RegisterDeliveryServer(gs, &rawServer{stream: func(s v1.Delivery_StreamServer) error {
			if err := welcome(s, 0); err != nil {
				return err
			}
			return eachDelivery(s, func(d *v1.Deliver) error {
				for _, a := range []*v1.Ack{
					{Seq: d.Seq + 1000, MessageId: d.Envelope.MessageId, Outcome: v1.Outcome_OUTCOME_OK},
					{Seq: d.Seq, MessageId: "someone-else", Outcome: v1.Outcome_OUTCOME_OK},
					{Seq: d.Seq, MessageId: d.Envelope.MessageId, Outcome: v1.Outcome(99), Code: v1.ReasonCode(77)},
					{Seq: d.Seq, MessageId: d.Envelope.MessageId, Outcome: v1.Outcome_OUTCOME_OK}, // ACKed already
				} {
					if err := s.Send(&v1.ServerFrame{Frame: &v1.ServerFrame_Ack{Ack: a}}); err != nil {
						return err
					}
				}
				return nil
			})
		}})
	})
	var mu sync.Mutex
	problems := map[grpcout.Problem]int{}
	c, _ := grpcout.New(grpcout.Config{Targets: []string{addr}, Window: 4}, grpcout.WithEventHook(func(e grpcout.Event) {
		if e.Kind == grpcout.ProtocolError {
			mu.Lock()
			problems[e.Problem]++
			mu.Unlock()
		}
	}))
	run(t, c)
	const n = 10
	a := newAcks(n)
	deliverAll(t, c, n, a)
	a.wait(t)
	for id, got := range a.got {
		if len(got) != 1 || got[0].Outcome != v1.Outcome(99) {
			t.Fatalf("message %s: got ACKs %v, want only the one naming it", id, got)
		}
	}
	want := map[grpcout.Problem]int{grpcout.ProblemUnknownSeq: 2 * n, grpcout.ProblemMessageMismatch: n,
		grpcout.ProblemUnknownOutcome: n, grpcout.ProblemUnknownCode: n}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := maps.Clone(problems)
		mu.Unlock()
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got problems %v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The first stream takes deliveries and dies without ACKing half of them;
// the client must resend exactly the un-ACKed ones on the next stream.
func TestResendUnackedAfterStreamFailure(t *testing.T) {
	var streams atomic.Int64
	var mu sync.Mutex
	received := map[string]int{}
	addr := serve(t, func(gs grpc.ServiceRegistrar) {
		v1.RegisterDeliveryServer(gs, &rawServer{stream: func(s v1.Delivery_StreamServer) error {
			n := streams.Add(1)
			if err := welcome(s, 0); err != nil {
				return err
			}
			count := 0
			return eachDelivery(s, func(d *v1.Deliver) error {
				mu.Lock()
				received[d.Envelope.MessageId]++
				mu.Unlock()
				count++
				if n == 1 && count == 20 {
					return errors.New("backend crashed")
				}
				if n == 1 && count%2 == 0 {
					return nil // first stream: leave every second delivery un-ACKed
				}
				return s.Send(ackFrame(d))
			})
		}})
	})
	// A long heartbeat: only noticing the dead stream itself can recover in time.
	c, _ := grpcout.New(grpcout.Config{Targets: []string{addr}, Window: 32, Backoff: grpcout.Backoff{Initial: 10 * time.Millisecond},
		Heartbeat: grpcout.Heartbeat{Interval: time.Minute}})
	run(t, c)
	a := newAcks(20)
	deliverAll(t, c, 20, a)
	a.wait(t)
	if streams.Load() < 2 {
		t.Fatalf("got %d streams, want a reconnect", streams.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range 20 {
		id := env(i).MessageId
		want := 1
		if (i+1)%2 == 0 {
			want = 2 // un-ACKed on the first stream: resent once with the same id
		}
		if received[id] != want {
			t.Errorf("message %s received %d times, want %d", id, received[id], want)
		}
		if len(a.got[id]) != 1 {
			t.Errorf("message %s acked %d times to the caller, want 1", id, len(a.got[id]))
		}
	}
}

// The backend grants 4 credits: never more than 4 un-ACKed deliveries.
func TestCreditsBoundInFlight(t *testing.T) {
	var outstanding, maxSeen atomic.Int64
	addr := serve(t, func(gs grpc.ServiceRegistrar) {
		v1.RegisterDeliveryServer(gs, &rawServer{stream: func(s v1.Delivery_StreamServer) error {
			if err := welcome(s, 4); err != nil {
				return err
			}
			pending := make(chan *v1.Deliver, 64)
			go func() { // slow ACKer: one ACK per 2ms
				for d := range pending {
					time.Sleep(2 * time.Millisecond)
					outstanding.Add(-1)
					if s.Send(ackFrame(d)) != nil {
						return
					}
				}
			}()
			defer close(pending)
			for {
				f, err := s.Recv()
				if err != nil {
					return nil
				}
				if d := f.GetDeliver(); d != nil {
					if n := outstanding.Add(1); n > maxSeen.Load() {
						maxSeen.Store(n)
					}
					pending <- d
				}
			}
		}})
	})
	c, _ := grpcout.New(grpcout.Config{Targets: []string{addr}, Window: 64})
	run(t, c)
	a := newAcks(100)
	deliverAll(t, c, 100, a)
	a.wait(t)
	if got := maxSeen.Load(); got > 4 || got < 1 {
		t.Fatalf("got at most %d un-ACKed deliveries at the backend, want 1..4", got)
	}
}

// A backend that answers Welcome and then nothing (frozen) is replaced
// after the heartbeat timeout.
func TestHeartbeatTimeoutReplacesSilentStream(t *testing.T) {
	var streams atomic.Int64
	addr := serve(t, func(gs grpc.ServiceRegistrar) {
		v1.RegisterDeliveryServer(gs, &rawServer{stream: func(s v1.Delivery_StreamServer) error {
			if err := welcome(s, 0); err != nil {
				return err
			}
			if streams.Add(1) == 1 {
				<-s.Context().Done() // frozen: never answers pings
				return nil
			}
			return eachDelivery(s, func(d *v1.Deliver) error { return s.Send(ackFrame(d)) })
		}})
	})
	var down atomic.Value
	c, _ := grpcout.New(grpcout.Config{
		Targets:   []string{addr},
		Heartbeat: grpcout.Heartbeat{Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond},
		Backoff:   grpcout.Backoff{Initial: 10 * time.Millisecond},
	}, grpcout.WithEventHook(func(e grpcout.Event) {
		if e.Kind == grpcout.StreamDown {
			down.CompareAndSwap(nil, e.Reason)
		}
	}))
	run(t, c)
	a := newAcks(5)
	deliverAll(t, c, 5, a)
	a.wait(t)
	if got, _ := down.Load().(grpcout.Reason); got != grpcout.ReasonHeartbeat {
		t.Fatalf("got stream end %q, want %q", got, grpcout.ReasonHeartbeat)
	}
}

// Drain: the backend asks the bridge to leave and stops gracefully; the
// bridge collects the outstanding ACKs, and once a backend is back on the
// same address it goes on without loss or double processing.
func TestDrainAndGracefulStopWithoutLoss(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	store := backend.NewMemoryStore(1000)
	handler := func(_ context.Context, e *v1.Envelope) backend.Result {
		mu.Lock()
		seen[e.MessageId]++
		mu.Unlock()
		time.Sleep(100 * time.Microsecond)
		return backend.Result{Outcome: v1.Outcome_OUTCOME_OK}
	}
	srv := backend.NewServer(backend.Config{}, handler, store)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	gs := grpc.NewServer()
	srv.Register(gs)
	go func() { _ = gs.Serve(ln) }()

	var reasons sync.Map
	c, _ := grpcout.New(grpcout.Config{Targets: []string{addr}, Window: 8, Backoff: grpcout.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}},
		grpcout.WithEventHook(func(e grpcout.Event) {
			if e.Kind == grpcout.StreamDown {
				reasons.Store(e.Reason, true)
			}
		}))
	run(t, c)
	a := newAcks(500)
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		for processed := 0; processed < 100; {
			time.Sleep(time.Millisecond)
			mu.Lock()
			processed = len(seen)
			mu.Unlock()
		}
		srv.Drain("test")
		gs.GracefulStop()
		srv2 := backend.NewServer(backend.Config{}, handler, store)
		ln2, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		gs = grpc.NewServer()
		srv2.Register(gs)
		go func() { _ = gs.Serve(ln2) }()
	}()
	deliverAll(t, c, 500, a)
	a.wait(t)
	<-restarted
	t.Cleanup(gs.Stop)
	mu.Lock()
	defer mu.Unlock()
	for id, n := range seen {
		if n != 1 {
			t.Errorf("message %s processed %d times", id, n)
		}
	}
	if len(seen) != 500 {
		t.Errorf("got %d processed, want 500", len(seen))
	}
	_, drained := reasons.Load(grpcout.ReasonDrain)
	_, goaway := reasons.Load(grpcout.ReasonGoAway) // GracefulStop's GOAWAY may overtake the drain frame
	if !drained && !goaway {
		t.Error("no stream ended for reason drain or goaway")
	}
}

// A backend that accepts the stream but never answers Hello is given up on
// after OpenTimeout, and the bridge tries again.
func TestOpenTimeout(t *testing.T) {
	var streams atomic.Int64
	addr := serve(t, func(gs grpc.ServiceRegistrar) {
		v1.RegisterDeliveryServer(gs, &rawServer{stream: func(s v1.Delivery_StreamServer) error {
			streams.Add(1)
			<-s.Context().Done() // never sends Welcome
			return nil
		}})
	})
	var down atomic.Value
	c, _ := grpcout.New(grpcout.Config{Targets: []string{addr}, OpenTimeout: 50 * time.Millisecond, Backoff: grpcout.Backoff{Initial: 10 * time.Millisecond}},
		grpcout.WithEventHook(func(e grpcout.Event) {
			if e.Kind == grpcout.StreamDown {
				down.CompareAndSwap(nil, e.Err.Error())
			}
		}))
	run(t, c)
	deadline := time.Now().Add(10 * time.Second)
	for streams.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("got %d stream attempts, want a retry after the open timeout", streams.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err, _ := down.Load().(string); !strings.Contains(err, "no welcome within") {
		t.Fatalf("got stream end %v, want the open timeout", err)
	}
	if c.Up() {
		t.Fatal("a stream without Welcome must not count as up")
	}
}

// TestDeliverByDeadline: a delivery no stream sent by its deadline is not
// sent at all and its AckFunc gets nil, with no backend up as with one; a
// delivery a stream sent once is delivered whatever its deadline (a
// backend may have acted on it), and a zero deadline never expires.
func TestDeliverByDeadline(t *testing.T) {
	var streams atomic.Int64
	var mu sync.Mutex
	received := map[string]int{}
	up := make(chan struct{})
	addr := serve(t, func(gs grpc.ServiceRegistrar) {
		v1.RegisterDeliveryServer(gs, &rawServer{stream: func(s v1.Delivery_StreamServer) error {
			<-up
			n := streams.Add(1)
			if err := welcome(s, 0); err != nil {
				return err
			}
			return eachDelivery(s, func(d *v1.Deliver) error {
				mu.Lock()
				received[d.Envelope.MessageId]++
				mu.Unlock()
				if n == 1 {
					return errors.New("backend crashed") // before its ACK
				}
				return s.Send(ackFrame(d))
			})
		}})
	})
	c, _ := grpcout.New(grpcout.Config{Targets: []string{addr}, Window: 32, Backoff: grpcout.Backoff{Initial: 10 * time.Millisecond}})
	run(t, c)
	type answer struct {
		id  string
		ack *v1.Ack
	}
	answers := make(chan answer, 10)
	deliver := func(i int, deadline time.Time) string {
		e := env(i)
		c.DeliverBy(0, e, deadline, func(ack *v1.Ack) error { answers <- answer{e.MessageId, ack}; return nil })
		return e.MessageId
	}
	wait := func() answer {
		t.Helper()
		return await.Receive(t, answers, 20*time.Second, "answer")
	}

	// Sent on the first stream, which dies before its ACK: resent after
	// its deadline passed, and ACKed.
	sentOnce := deliver(0, time.Now().Add(time.Second))
	close(up)
	if a := wait(); a.id != sentOnce || a.ack == nil {
		t.Fatalf("got %s with ack %v, want %s ACKed", a.id, a.ack, sentOnce)
	}
	// Past its deadline before a stream could send it: never sent.
	late := deliver(1, time.Now().Add(-time.Millisecond))
	// No deadline: delivered.
	never := deliver(2, time.Time{})
	got := map[string]*v1.Ack{}
	for range 2 {
		a := wait()
		got[a.id] = a.ack
	}
	if ack, ok := got[late]; !ok || ack != nil {
		t.Errorf("past its deadline: answered %v (%v), want a nil ack", ok, ack)
	}
	if ack := got[never]; ack == nil {
		t.Errorf("without a deadline: ack %v, want the backend's", ack)
	}
	mu.Lock()
	defer mu.Unlock()
	if received[sentOnce] != 2 || received[late] != 0 || received[never] != 1 {
		t.Errorf("the backend received %v, want %s twice, %s never, %s once", received, sentOnce, late, never)
	}
}

// TestDeliverByDeadlineWithoutBackend: with no backend up a delivery is
// answered nil about a second after its deadline.
func TestDeliverByDeadlineWithoutBackend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there
	c, _ := grpcout.New(grpcout.Config{Targets: []string{addr}, Window: 32, Backoff: grpcout.Backoff{Initial: 10 * time.Millisecond}})
	run(t, c)
	done := make(chan *v1.Ack, 2)
	c.DeliverBy(0, env(0), time.Now().Add(100*time.Millisecond), func(ack *v1.Ack) error { done <- ack; return nil })
	c.Deliver(0, env(1), func(ack *v1.Ack) error { done <- ack; return nil })
	select {
	case ack := <-done:
		if ack != nil {
			t.Fatalf("ack %v from no backend", ack)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("an expired delivery was not answered within 20s")
	}
}
