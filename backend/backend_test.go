package backend

import (
	"context"
	"errors"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

func TestMemoryStoreEvictsOldest(t *testing.T) {
	s := NewMemoryStore(2)
	for _, id := range []string{"a", "b", "c"} {
		_ = s.Save(&v1.Envelope{MessageId: id}, Result{Reply: []byte(id)})
	}
	if _, ok := s.Lookup("a"); ok {
		t.Fatal("oldest entry survived past capacity")
	}
	if r, ok := s.Lookup("c"); !ok || string(r.Reply) != "c" {
		t.Fatalf("got %v %v, want c", r, ok)
	}
	if s.Len() != 2 {
		t.Fatalf("got len %d, want 2", s.Len())
	}
}

type failingStore struct{ *MemoryStore }

func (failingStore) Save(*v1.Envelope, Result) error { return errors.New("disk full") }

func TestProcessOutcomes(t *testing.T) {
	calls := 0
	h := func(_ context.Context, env *v1.Envelope) Result {
		calls++
		if env.RequestId == "retry" {
			return Result{Outcome: v1.Outcome_OUTCOME_RETRY, Code: v1.ReasonCode_REASON_CODE_BUSY}
		}
		return Result{Outcome: v1.Outcome_OUTCOME_OK, Reply: []byte("ok")}
	}
	tests := []struct {
		name  string
		store Store
		env   *v1.Envelope
		want  v1.Outcome
		calls int
	}{
		{name: "ok", store: NewMemoryStore(8), env: &v1.Envelope{MessageId: "1"}, want: v1.Outcome_OUTCOME_OK, calls: 1},
		{name: "retry is not saved", store: NewMemoryStore(8), env: &v1.Envelope{MessageId: "2", RequestId: "retry"}, want: v1.Outcome_OUTCOME_RETRY, calls: 1},
		{name: "no message id", store: NewMemoryStore(8), env: &v1.Envelope{}, want: v1.Outcome_OUTCOME_REJECT, calls: 0},
		{name: "store failure is a retry, never a false OK", store: failingStore{NewMemoryStore(8)}, env: &v1.Envelope{MessageId: "3"}, want: v1.Outcome_OUTCOME_RETRY, calls: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls = 0
			s := NewServer(Config{}, h, tc.store)
			ack := s.process(context.Background(), &v1.Deliver{Seq: 9, Envelope: tc.env})
			if ack.Outcome != tc.want || ack.Seq != 9 {
				t.Fatalf("got %v seq %d, want %v seq 9", ack.Outcome, ack.Seq, tc.want)
			}
			if calls != tc.calls {
				t.Fatalf("got %d handler calls, want %d", calls, tc.calls)
			}
			// A second delivery: OK is a DUPLICATE without a call, RETRY calls again.
			calls = 0
			again := s.process(context.Background(), &v1.Deliver{Seq: 10, Envelope: tc.env})
			if tc.want == v1.Outcome_OUTCOME_OK && (again.Outcome != v1.Outcome_OUTCOME_DUPLICATE || calls != 0 || string(again.Reply) != "ok") {
				t.Fatalf("redelivery got %v (calls %d), want DUPLICATE with the stored reply and no call", again.Outcome, calls)
			}
			if tc.name == "retry is not saved" && calls != 1 {
				t.Fatalf("redelivery of a RETRY got %d calls, want 1", calls)
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
