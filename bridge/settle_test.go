package bridge_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/grpcout"
)

// A backend whose reply cannot go to the device (a REJECTED status under
// OUTCOME_OK) breaks the protocol: the bridge counts it, resends (the
// backend answers from its store), and after max_attempts dead-letters the
// request as protocol_error and answers the device ERROR.
func TestInvalidReplyIsAProtocolError(t *testing.T) {
	leakCheck(t)
	var mu sync.Mutex
	calls := 0
	p := newPipeline(t, func(_ context.Context, env *v1.Envelope) backend.Result {
		mu.Lock()
		calls++
		mu.Unlock()
		return backend.Result{Outcome: v1.Outcome_OUTCOME_OK, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_REJECTED}}
	})
	p.Config.Backend.MaxAttempts = 3
	p.Config.Backend.RetryBackoff = 10 * time.Millisecond
	b := p.StartTest(t)

	replies := make(chan []byte, 1)
	dev := device(t, p, "dev-1", replies)
	dev.Publish("payment/request/dev-1", 1, false, `{"request_id":"bad-reply","amount_minor":100,"currency":"EUR"}`).Wait()
	got := awaitReplies(t, replies, 1)["bad-reply"]
	if got.Status != "ERROR" {
		t.Fatalf("got reply %+v, want ERROR", got)
	}
	if dlq := readDLQ(t, p.Kafka.Addr(), p.Config.Kafka.DLQTopic, 1); dlq["bad-reply"] != "protocol_error" {
		t.Fatalf("got DLQ reasons %v, want bad-reply=protocol_error", dlq)
	}
	if n := metric(t, b, "edgebridge_grpc_stream_protocol_errors_total", "error", string(grpcout.ProblemInvalidReply)); n != 3 {
		t.Fatalf("got %v invalid_reply protocol errors, want 3 (one per attempt)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Fatalf("got %d handler calls, want 1 (redeliveries answered from the store)", calls)
	}
}

// The window holds backend.window records per open stream: it grows when a
// second backend's stream opens and shrinks back when it goes away.
func TestWindowFollowsOpenStreams(t *testing.T) {
	leakCheck(t)
	p := newPipeline(t, func(_ context.Context, env *v1.Envelope) backend.Result { return approve(env) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	second := backend.NewGRPCServer()
	backend.NewServer(backend.Config{}, func(_ context.Context, env *v1.Envelope) backend.Result { return approve(env) }, nil).Register(second)
	go func() { _ = second.Serve(ln) }()
	t.Cleanup(second.Stop)
	p.Config.Backend.Targets = append(p.Config.Backend.Targets, ln.Addr().String())
	p.Config.Backend.Window = 32
	b := p.StartTest(t)

	capacity := func() int { return int(metric(t, b, "edgebridge_window_capacity")) }
	waitUntil(t, "a window of 2 x 32 with both streams up", func() bool { return capacity() == 64 })
	second.Stop()
	waitUntil(t, "the window back to 32 with one stream", func() bool { return capacity() == 32 })
}

// metric returns the value of the series of name whose labels include the
// pairs given (label, value, ...), a histogram's sample count; 0 if there
// is none.
func metric(t *testing.T, b *bridge.Bridge, name string, labels ...string) float64 {
	t.Helper()
	families, err := b.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}
