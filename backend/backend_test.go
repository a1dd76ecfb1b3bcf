package backend

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kit/grpctest"
)

func TestMemoryStoreEvictsOldest(t *testing.T) {
	s := NewMemoryStore(2)
	for _, id := range []string{"a", "b", "c"} {
		_ = s.Save(&v1.Envelope{MessageId: id}, Result{RawReply: []byte(id)})
	}
	if _, ok := s.Lookup("a"); ok {
		t.Fatal("oldest entry survived past capacity")
	}
	if r, ok := s.Lookup("c"); !ok || string(r.RawReply) != "c" {
		t.Fatalf("got %v %v, want c", r, ok)
	}
	if s.Len() != 2 {
		t.Fatalf("got len %d, want 2", s.Len())
	}
}

type failingStore struct{ *MemoryStore }

func (failingStore) Save(*v1.Envelope, Result) error { return errors.New("disk full") }

// envelope is a valid envelope of request id for device "d" with content
// fingerprint fp.
func envelope(id, fp string) *v1.Envelope {
	return &v1.Envelope{MessageId: v1.MessageID("d", id), DeviceId: "d", RequestId: id, Fingerprint: fp}
}

func fp(s string) string { return fmt.Sprintf("%064x", sha256.Sum256([]byte(s))) }

// The helper's verdicts: what the handler sees, what is stored, and how a
// second delivery of the same message id is answered.
func TestProcessOutcomes(t *testing.T) {
	calls := 0
	h := func(_ context.Context, env *v1.Envelope) Result {
		calls++
		switch env.RequestId {
		case "retry":
			return Result{Outcome: v1.Outcome_OUTCOME_RETRY, Code: v1.ReasonCode_REASON_CODE_BUSY}
		case "blocked":
			return Result{Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_NOT_PERMITTED, Reason: "merchant blocked"}
		case "garbage":
			return Result{Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_INVALID_REQUEST, Reason: "cannot parse"}
		case "newer":
			return Result{Outcome: v1.Outcome(42)}
		}
		return Result{Outcome: v1.Outcome_OUTCOME_OK, RawReply: []byte("ok")}
	}
	long := strings.Repeat("x", v1.MaxIDLen+1)
	type outcomeCase struct {
		name  string
		store Store
		env   *v1.Envelope
		want  v1.Outcome
		code  v1.ReasonCode
		calls int
		// again is the second delivery: its envelope (default env) and answer.
		again      *v1.Envelope
		againWant  v1.Outcome
		againCode  v1.ReasonCode
		againDup   bool
		againCalls int
	}
	tests := []outcomeCase{
		{name: "ok, redelivery answered from the store", env: envelope("r1", fp("a")), want: v1.Outcome_OUTCOME_OK, calls: 1,
			againWant: v1.Outcome_OUTCOME_OK, againDup: true},
		{name: "retry is not saved", env: envelope("retry", ""), want: v1.Outcome_OUTCOME_RETRY, code: v1.ReasonCode_REASON_CODE_BUSY, calls: 1,
			againWant: v1.Outcome_OUTCOME_RETRY, againCode: v1.ReasonCode_REASON_CODE_BUSY, againCalls: 1},
		{name: "an unknown outcome from the handler is a retry", env: envelope("newer", ""), want: v1.Outcome_OUTCOME_RETRY, calls: 1,
			againWant: v1.Outcome_OUTCOME_RETRY, againCalls: 1},
		{name: "a saved REJECT stays a REJECT", env: envelope("blocked", fp("b")), want: v1.Outcome_OUTCOME_REJECT,
			code: v1.ReasonCode_REASON_CODE_NOT_PERMITTED, calls: 1,
			againWant: v1.Outcome_OUTCOME_REJECT, againCode: v1.ReasonCode_REASON_CODE_NOT_PERMITTED, againDup: true},
		{name: "an invalid_request REJECT is not saved", env: envelope("garbage", ""), want: v1.Outcome_OUTCOME_REJECT,
			code: v1.ReasonCode_REASON_CODE_INVALID_REQUEST, calls: 1,
			againWant: v1.Outcome_OUTCOME_REJECT, againCode: v1.ReasonCode_REASON_CODE_INVALID_REQUEST, againCalls: 1},
		{name: "same id, other content: conflict", env: envelope("r2", fp("a")), want: v1.Outcome_OUTCOME_OK, calls: 1,
			again: envelope("r2", fp("5,000,000 USD")), againWant: v1.Outcome_OUTCOME_REJECT, againCode: v1.ReasonCode_REASON_CODE_CONFLICT},
		{name: "a result saved without fingerprint matches any content", env: envelope("r3", ""), want: v1.Outcome_OUTCOME_OK, calls: 1,
			again: envelope("r3", fp("x")), againWant: v1.Outcome_OUTCOME_OK, againDup: true},
		{name: "store failure is a retry, never a false OK", store: failingStore{NewMemoryStore(8)}, env: envelope("r4", ""),
			want: v1.Outcome_OUTCOME_RETRY, code: v1.ReasonCode_REASON_CODE_UNAVAILABLE, calls: 1,
			againWant: v1.Outcome_OUTCOME_RETRY, againCode: v1.ReasonCode_REASON_CODE_UNAVAILABLE, againCalls: 1},
	}
	invalid := map[string]*v1.Envelope{
		"no envelope":                   nil,
		"no message id":                 {DeviceId: "d", RequestId: "r"},
		"message id of another request": {MessageId: v1.MessageID("d", "other"), DeviceId: "d", RequestId: "r"},
		"message id of another device":  {MessageId: v1.MessageID("e", "r"), DeviceId: "d", RequestId: "r"},
		"device id too long":            {MessageId: v1.MessageID(long, "r"), DeviceId: long, RequestId: "r"},
		"invalid UTF-8":                 {MessageId: v1.MessageID("d\xff", "r"), DeviceId: "d\xff", RequestId: "r"},
		"payload too large":             {MessageId: v1.MessageID("d", "r"), DeviceId: "d", RequestId: "r", Payload: make([]byte, v1.MaxPayloadLen+1)},
		"fingerprint not hex":           {MessageId: v1.MessageID("d", "r"), DeviceId: "d", RequestId: "r", Fingerprint: "zz"},
		"too much trace":                {MessageId: v1.MessageID("d", "r"), DeviceId: "d", RequestId: "r", TraceContext: map[string]string{"traceparent": long + long + long + long + long}},
	}
	for name, env := range invalid {
		tests = append(tests, outcomeCase{name: "refused, not stored: " + name, env: env, want: v1.Outcome_OUTCOME_REJECT, code: v1.ReasonCode_REASON_CODE_INVALID_REQUEST,
			againWant: v1.Outcome_OUTCOME_REJECT, againCode: v1.ReasonCode_REASON_CODE_INVALID_REQUEST})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls = 0
			store := tc.store
			if store == nil {
				store = NewMemoryStore(8)
			}
			s := NewServer(Config{}, h, store)
			ack := s.process(context.Background(), &v1.Deliver{Seq: 9, Envelope: tc.env})
			if ack.Outcome != tc.want || ack.Code != tc.code || ack.Seq != 9 || ack.Duplicate {
				t.Fatalf("got %v %v seq %d dup %v (%s), want %v %v seq 9", ack.Outcome, ack.Code, ack.Seq, ack.Duplicate, ack.Reason, tc.want, tc.code)
			}
			if calls != tc.calls {
				t.Fatalf("got %d handler calls, want %d", calls, tc.calls)
			}
			if ms, ok := store.(*MemoryStore); ok && tc.want == v1.Outcome_OUTCOME_REJECT && tc.code == v1.ReasonCode_REASON_CODE_INVALID_REQUEST && ms.Len() != 0 {
				t.Fatalf("stored %d results of an invalid request, want none", ms.Len())
			}
			calls = 0
			again := tc.again
			if again == nil {
				again = tc.env
			}
			a := s.process(context.Background(), &v1.Deliver{Seq: 10, Envelope: again})
			if a.Outcome != tc.againWant || a.Code != tc.againCode || a.Duplicate != tc.againDup || calls != tc.againCalls {
				t.Fatalf("second delivery: got %v %v dup %v (%d calls), want %v %v dup %v (%d calls)",
					a.Outcome, a.Code, a.Duplicate, calls, tc.againWant, tc.againCode, tc.againDup, tc.againCalls)
			}
			if tc.againDup && (!bytes.Equal(a.RawReply, ack.RawReply) || a.Reason != ack.Reason) {
				t.Fatalf("duplicate answered %q/%q, want the stored %q/%q", a.RawReply, a.Reason, ack.RawReply, ack.Reason)
			}
		})
	}
}

// Drain turns the health service to NOT_SERVING (the bridge checks it
// before reconnecting after failures).
func TestDrainReportsNotServing(t *testing.T) {
	s := NewServer(Config{}, nil, nil)
	for _, want := range []healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING} {
		if want == healthpb.HealthCheckResponse_NOT_SERVING {
			s.Drain("test")
		}
		resp, err := s.health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: ServiceName})
		if err != nil || resp.GetStatus() != want {
			t.Fatalf("got %v, %v; want %v", resp.GetStatus(), err, want)
		}
	}
}

// A pong's load is un-ACKed deliveries against the grant.
func TestStreamLoad(t *testing.T) {
	tests := []struct {
		name     string
		window   uint32
		inflight int64
		credits  int64
		want     uint32
	}{
		{name: "half of the grant", window: 128, inflight: 2, credits: 4, want: 50},
		{name: "no grant: the bridge's window", window: 10, inflight: 9, credits: -1, want: 90},
		{name: "paused", window: 10, inflight: 0, credits: 0, want: 100},
		{name: "capped at 100", window: 10, inflight: 6, credits: 4, want: 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := &serverStream{window: tc.window}
			st.inflight.Store(tc.inflight)
			if got := st.load(tc.credits); got != tc.want {
				t.Fatalf("got load %d, want %d", got, tc.want)
			}
		})
	}
}

// serve runs s on a loopback gRPC server and returns a Delivery client.
func serve(t *testing.T, s *Server) v1.DeliveryClient {
	t.Helper()
	return v1.NewDeliveryClient(grpctest.Dial(t, grpctest.Serve(t, grpc.NewServer(), s.Register)))
}

// A bridge's frames are not trusted: a window past MaxWindow is clamped
// (sizing by it ran paymentd out of memory), more un-ACKed deliveries than
// the window end the stream, and a stream must begin with Hello.
func TestStreamRefusesHostileFrames(t *testing.T) {
	release := make(chan struct{})
	h := func(ctx context.Context, env *v1.Envelope) Result {
		if env.RequestId == "slow" {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return Result{Outcome: v1.Outcome_OUTCOME_OK}
	}
	client := serve(t, NewServer(Config{}, h, nil))
	deliver := func(seq uint64, id string) *v1.ClientFrame {
		return &v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: seq, Envelope: envelope(id, "")}}}
	}
	hello := func(window uint32) *v1.ClientFrame {
		return &v1.ClientFrame{Frame: &v1.ClientFrame_Hello{Hello: &v1.Hello{BridgeId: strings.Repeat("b", 1<<16), Window: window}}}
	}
	open := func(t *testing.T, first *v1.ClientFrame) v1.Delivery_StreamClient {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t.Cleanup(cancel)
		st, err := client.Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(first); err != nil {
			t.Fatal(err)
		}
		return st
	}

	t.Run("huge window is clamped", func(t *testing.T) {
		st := open(t, hello(4294967280))
		if err := st.Send(deliver(1, "r1")); err != nil {
			t.Fatal(err)
		}
		if a := grpctest.NextAck(t, st); a.Outcome != v1.Outcome_OUTCOME_OK || a.Seq != 1 {
			t.Fatalf("got %v, want OK for seq 1", a)
		}
	})
	t.Run("more than the window ends the stream", func(t *testing.T) {
		// The first delivery's handler blocks until the test ends, so the
		// third is one past the window of 2 whenever it arrives.
		t.Cleanup(func() { close(release) })
		st := open(t, hello(2))
		for i := range 3 {
			if err := st.Send(deliver(uint64(i+1), "slow")); err != nil {
				break // the server may have ended the stream already
			}
		}
		for {
			_, err := st.Recv()
			if err == nil {
				continue
			}
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("got %v, want ResourceExhausted", err)
			}
			return
		}
	})
	t.Run("first frame must be hello", func(t *testing.T) {
		st := open(t, deliver(1, "r1"))
		if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("got %v, want InvalidArgument", err)
		}
	})
}
