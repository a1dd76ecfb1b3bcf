package settle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/transcoder"
)

func envelope() *v1.Envelope {
	return &v1.Envelope{DeviceId: "dev-1", RequestId: "r-1", MessageId: v1.MessageID("dev-1", "r-1")}
}

func jsonReply(status, code, reason string) []byte {
	env := envelope()
	b := fmt.Appendf(nil, `{"request_id":"%s","message_id":"%s","status":"%s"`, env.RequestId, env.MessageId, status)
	if code != "" {
		b = fmt.Appendf(b, `,"code":"%s"`, code)
	}
	if reason != "" {
		b = fmt.Appendf(b, `,"reason":"%s"`, reason)
	}
	return append(b, '}')
}

func TestDecide(t *testing.T) {
	policy := Policy{MaxAttempts: 3, Backoff: time.Second}
	ok, rej, retry := v1.Outcome_OUTCOME_OK, v1.Outcome_OUTCOME_REJECT, v1.Outcome_OUTCOME_RETRY
	approved := &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}
	tests := []struct {
		name      string
		policy    Policy
		attempt   int
		answer    Answer
		noReply   bool // a path without device replies (Dapr)
		want      Decision
		wantReply []byte
	}{
		{name: "ok with typed reply", attempt: 1, answer: Answer{Outcome: ok, Reply: approved},
			want: Decision{Action: Commit}, wantReply: jsonReply("APPROVED", "", "")},
		{name: "ok with ids filled in by the backend", attempt: 1,
			answer: Answer{Outcome: ok, Reply: &v1.PaymentReply{RequestId: "r-1", MessageId: envelope().MessageId, Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}},
			want:   Decision{Action: Commit}, wantReply: jsonReply("APPROVED", "", "")},
		{name: "declined is a business answer", attempt: 1,
			answer: Answer{Outcome: ok, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_DECLINED, Code: v1.ReasonCode_REASON_CODE_LIMIT_EXCEEDED, Reason: "over"}},
			want:   Decision{Action: Commit}, wantReply: jsonReply("DECLINED", "limit_exceeded", "over")},
		{name: "ok without reply: the device gets nothing", attempt: 1, answer: Answer{Outcome: ok},
			want: Decision{Action: Commit}},
		{name: "raw reply overrides the typed one", attempt: 1, answer: Answer{Outcome: ok, Reply: approved, RawReply: []byte("raw")},
			want: Decision{Action: Commit}, wantReply: []byte("raw")},
		{name: "legacy duplicate outcome commits", attempt: 2, answer: Answer{Outcome: v1.Outcome_OUTCOME_DUPLICATE, RawReply: []byte("stored")},
			want: Decision{Action: Commit}, wantReply: []byte("stored")},
		{name: "reject without reply gets a built REJECTED one", attempt: 1,
			answer: Answer{Outcome: rej, Code: v1.ReasonCode_REASON_CODE_CONFLICT, Reason: "reused id"},
			want:   Decision{Action: DeadLetter, Reason: "conflict", Detail: "reused id"}, wantReply: jsonReply("REJECTED", "conflict", "reused id")},
		{name: "reject without code", attempt: 1, answer: Answer{Outcome: rej},
			want: Decision{Action: DeadLetter, Reason: ReasonRejected}, wantReply: jsonReply("REJECTED", "", "")},
		{name: "reject with its own reply", attempt: 1,
			answer: Answer{Outcome: rej, Code: v1.ReasonCode_REASON_CODE_NOT_PERMITTED, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_REJECTED, Reason: "blocked"}},
			want:   Decision{Action: DeadLetter, Reason: "not_permitted"}, wantReply: jsonReply("REJECTED", "", "blocked")},
		{name: "first retry waits the backoff", attempt: 1, answer: Answer{Outcome: retry, Code: v1.ReasonCode_REASON_CODE_BUSY},
			want: Decision{Action: Redeliver, Delay: time.Second}},
		{name: "backoff doubles", attempt: 2, answer: Answer{Outcome: retry},
			want: Decision{Action: Redeliver, Delay: 2 * time.Second}},
		{name: "backoff stops at 32x", policy: Policy{MaxAttempts: 20, Backoff: time.Second}, attempt: 12, answer: Answer{Outcome: retry},
			want: Decision{Action: Redeliver, Delay: 32 * time.Second}},
		{name: "retry reply is ignored", attempt: 1, answer: Answer{Outcome: retry, Reply: &v1.PaymentReply{}},
			want: Decision{Action: Redeliver, Delay: time.Second}},
		{name: "last retry dead-letters with an ERROR reply", attempt: 3,
			answer: Answer{Outcome: retry, Code: v1.ReasonCode_REASON_CODE_UNAVAILABLE, Reason: "db down"},
			want:   Decision{Action: DeadLetter, Reason: "unavailable", Detail: "db down"}, wantReply: jsonReply("ERROR", "unavailable", "db down")},
		{name: "last retry without code", attempt: 3, answer: Answer{Outcome: retry},
			want: Decision{Action: DeadLetter, Reason: ReasonRetriesExhausted}, wantReply: jsonReply("ERROR", "", "")},
		{name: "unset outcome is a protocol error, redelivered", attempt: 1, answer: Answer{},
			want: Decision{Action: Redeliver, Delay: time.Second, Problem: ProblemUnknownOutcome, Detail: "outcome 0"}},
		{name: "unknown outcome at the last attempt", attempt: 3, answer: Answer{Outcome: 99, Code: v1.ReasonCode_REASON_CODE_BUSY},
			want:      Decision{Action: DeadLetter, Reason: ReasonProtocolError, Detail: "outcome 99", Problem: ProblemUnknownOutcome},
			wantReply: jsonReply("ERROR", "busy", "")},
		{name: "typed reply with the wrong status", attempt: 1,
			answer: Answer{Outcome: ok, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_REJECTED}},
			want:   Decision{Action: Redeliver, Delay: time.Second, Problem: ProblemInvalidReply, Detail: "reply status PAYMENT_STATUS_REJECTED with OUTCOME_OK, want APPROVED or DECLINED"}},
		{name: "typed reply without status", attempt: 1, answer: Answer{Outcome: ok, Reply: &v1.PaymentReply{}},
			want: Decision{Action: Redeliver, Delay: time.Second, Problem: ProblemInvalidReply, Detail: "reply status PAYMENT_STATUS_UNSPECIFIED with OUTCOME_OK, want APPROVED or DECLINED"}},
		{name: "typed reply for another request", attempt: 1,
			answer: Answer{Outcome: ok, Reply: &v1.PaymentReply{RequestId: "r-2", Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}},
			want:   Decision{Action: Redeliver, Delay: time.Second, Problem: ProblemInvalidReply, Detail: `reply request_id "r-2" is not the envelope's`}},
		{name: "typed reply with an unknown code", attempt: 1,
			answer: Answer{Outcome: ok, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_DECLINED, Code: 77}},
			want:   Decision{Action: Redeliver, Delay: time.Second, Problem: ProblemInvalidReply, Detail: "reply code 77 is not a ReasonCode"}},
		{name: "typed reply reason too long", attempt: 3,
			answer:    Answer{Outcome: ok, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_DECLINED, Reason: strings.Repeat("x", MaxReplyReason+1)}},
			want:      Decision{Action: DeadLetter, Reason: ReasonProtocolError, Problem: ProblemInvalidReply, Detail: "reply reason is over 1024 bytes or not UTF-8"},
			wantReply: jsonReply("ERROR", "", "")},
		{name: "raw reply too large", attempt: 1, answer: Answer{Outcome: ok, RawReply: make([]byte, MaxRawReply+1)},
			want: Decision{Action: Redeliver, Delay: time.Second, Problem: ProblemInvalidReply, Detail: "raw_reply has 65537 bytes, limit 65536"}},
		{name: "dapr: an app error is redelivered", noReply: true, policy: Policy{MaxAttempts: 2, Backoff: time.Second, ExhaustedReason: "dapr_max_attempts"},
			attempt: 1, answer: Answer{Outcome: retry, Reason: "app failed"}, want: Decision{Action: Redeliver, Delay: time.Second}},
		{name: "dapr: the last app error dead-letters, no reply", noReply: true, policy: Policy{MaxAttempts: 2, Backoff: time.Second, ExhaustedReason: "dapr_max_attempts"},
			attempt: 2, answer: Answer{Outcome: retry, Reason: "app failed"}, want: Decision{Action: DeadLetter, Reason: "dapr_max_attempts", Detail: "app failed"}},
		{name: "dapr: ok commits", noReply: true, attempt: 1, answer: Answer{Outcome: ok}, want: Decision{Action: Commit}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := policy
			if tc.policy.MaxAttempts != 0 {
				p = tc.policy
			}
			got := p.Decide(&Record{Attempt: tc.attempt, Envelope: envelope()}, tc.answer, !tc.noReply)
			reply := got.Reply
			got.Reply = nil
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if !bytes.Equal(reply, tc.wantReply) {
				t.Errorf("got reply %s, want %s", reply, tc.wantReply)
			}
			if reply != nil {
				if _, err := transcoder.DecodeReply(reply); err != nil && tc.answer.RawReply == nil {
					t.Errorf("rendered reply is not the device's JSON: %v", err)
				}
			}
		})
	}
}

// sink records what a Settler does; writes fail while failDLQ/failReply > 0.
type sink struct {
	mu        sync.Mutex
	failDLQ   int
	failReply int
	log       []string
	dls       []kafkapipe.DeadLetter
	settled   chan Decision
	redeliver chan *Record
}

func newSink() *sink {
	return &sink{settled: make(chan Decision, 16), redeliver: make(chan *Record, 16)}
}

func (s *sink) note(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, fmt.Sprintf(format, args...))
}

func (s *sink) Redeliver(_ context.Context, r *Record) error {
	s.note("redeliver %d", r.Offset)
	s.redeliver <- r
	return nil
}

func (s *sink) WriteDeadLetter(_ context.Context, _ *Record, dl *kafkapipe.DeadLetter) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failDLQ > 0 {
		s.failDLQ--
		dl.Keep = 4 // a refused dead letter may be shrunk for the next attempt
		return errors.New("kafka down")
	}
	s.log = append(s.log, "dead-letter "+dl.Reason)
	s.dls = append(s.dls, *dl)
	return nil
}

func (s *sink) Reply(_ context.Context, r *Record, payload []byte) error {
	topic := r.ReplyTopic
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failReply > 0 {
		s.failReply--
		return errors.New("mqtt down")
	}
	s.log = append(s.log, "reply "+topic)
	return nil
}

func (s *sink) Settled(r *Record, d Decision) {
	s.note("settled %d %s", r.Offset, d.Action)
	s.settled <- d
}

func (s *sink) steps() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log)
}

func newSettler(s *sink) *Settler {
	return New(Config{Policy: Policy{MaxAttempts: 2, Backoff: time.Second}, Finishers: 4, DLQTopic: "dlq",
		MaxMessageBytes: 1 << 20, WantReply: true}, s, WithLogger(slog.New(slog.DiscardHandler)))
}

// A dead letter, then the reply, then the window ACK, each retried until it
// succeeds: the record is settled once and only after both.
func TestSettlerDeadLettersThenRepliesThenAcks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		snk := newSink()
		snk.failDLQ, snk.failReply = 2, 3
		st := newSettler(snk)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { st.Run(ctx); close(done) }()

		r := &Record{Offset: 7, Attempt: 1, Envelope: envelope(), DeviceID: "dev-1", Source: "payment/request/dev-1", ReplyTopic: "payment/response/dev-1"}
		d := st.Settle(r, Answer{Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_CONFLICT})
		if d.Action != DeadLetter {
			t.Fatalf("got %v, want dead_letter", d.Action)
		}
		<-snk.settled
		want := []string{"dead-letter conflict", "reply payment/response/dev-1", "settled 7 dead_letter"}
		if got := snk.steps(); !slices.Equal(got, want) {
			t.Fatalf("got steps %q, want %q", got, want)
		}
		if dl := snk.dls[0]; dl.Keep != 4 || dl.DeviceID != "dev-1" || dl.Topic != "dlq" || len(dl.Payload) == 0 {
			t.Fatalf("got dead letter %+v, want the shrunken envelope on dlq", dl)
		}
		cancel()
		<-done
	})
}

// A RETRY is redelivered when its backoff is due, not before; a commit
// without a reply is ACKed at once.
func TestSettlerRedeliversWhenDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		snk := newSink()
		st := newSettler(snk)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { st.Run(ctx); close(done) }()

		r := &Record{Offset: 3, Attempt: 1, Envelope: envelope(), ReplyTopic: "t"}
		start := time.Now()
		st.Settle(r, Answer{Outcome: v1.Outcome_OUTCOME_RETRY})
		got := <-snk.redeliver
		if waited := time.Since(start); got != r || waited != time.Second {
			t.Fatalf("redelivered %v after %s, want the record after 1s", got, waited)
		}
		r.Attempt++
		st.Settle(r, Answer{Outcome: v1.Outcome_OUTCOME_OK})
		if d := <-snk.settled; d.Action != Commit {
			t.Fatalf("got %v, want commit", d.Action)
		}
		cancel()
		<-done
		if got, want := snk.steps(), []string{"redeliver 3", "settled 3 commit"}; !slices.Equal(got, want) {
			t.Fatalf("got steps %q, want %q", got, want)
		}
	})
}

// A Settler that stops leaves what it could not finish un-ACKed.
func TestSettlerStopLeavesUnfinishedUnacked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		snk := newSink()
		snk.failDLQ = 1 << 30
		st := newSettler(snk)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { st.Run(ctx); close(done) }()
		st.DeadLetter(&Record{Offset: 1, Payload: []byte("x")}, "corrupt_envelope", "not an envelope")
		time.Sleep(time.Minute) // virtual: the write keeps failing
		cancel()
		<-done
		if got := snk.steps(); len(got) != 0 {
			t.Fatalf("got steps %q, want none", got)
		}
	})
}

// Settle queues without blocking, before Run and however many: a
// consumer that stops taking new work still settles what its window holds.
func TestSettleNeverBlocks(t *testing.T) {
	snk := newSink()
	st := newSettler(snk)
	for i := range 4 {
		st.Settle(&Record{Offset: int64(i), Attempt: 1, Envelope: envelope(), ReplyTopic: "t"},
			Answer{Outcome: v1.Outcome_OUTCOME_OK, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}})
	}
	run, stop := context.WithCancel(t.Context())
	finished := make(chan struct{})
	go func() { st.Run(run); close(finished) }()
	for i := range 4 {
		select {
		case d := <-snk.settled:
			if d.Action != Commit {
				t.Fatalf("got %v, want commit", d.Action)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d of 4 records settled, want all: decisions were dropped", i)
		}
	}
	stop()
	<-finished
}

// gatedSink holds every reply until all of them are being published: only
// finishers working in parallel get past it.
type gatedSink struct {
	*sink
	mu     sync.Mutex
	inside int
	all    chan struct{}
	want   int
}

func (g *gatedSink) Reply(ctx context.Context, r *Record, payload []byte) error {
	g.mu.Lock()
	g.inside++
	if g.inside == g.want {
		close(g.all)
	}
	g.mu.Unlock()
	<-g.all
	return g.sink.Reply(ctx, r, payload)
}

// Replies are published by Finishers goroutines at once (a reply waits for
// the broker's PUBACK: one at a time would cap throughput at 1/RTT).
func TestSettlerFinishesInParallel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := &gatedSink{sink: newSink(), all: make(chan struct{}), want: 4}
		st := New(Config{Finishers: 4, WantReply: true}, g, WithLogger(slog.New(slog.DiscardHandler)))
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { st.Run(ctx); close(done) }()
		for i := range 4 {
			st.Settle(&Record{Offset: int64(i), Attempt: 1, Envelope: envelope(), ReplyTopic: "t"},
				Answer{Outcome: v1.Outcome_OUTCOME_OK, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}})
		}
		for range 4 {
			<-g.settled // a deadlock here (synctest reports it) means the replies went one at a time
		}
		cancel()
		<-done
	})
}

// heldSink holds every reply until hold is closed.
type heldSink struct {
	*sink
	hold chan struct{}
}

func (h heldSink) Reply(ctx context.Context, r *Record, payload []byte) error {
	<-h.hold
	return h.sink.Reply(ctx, r, payload)
}

func (s *Settler) finishersRunning() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// Finishers run only while there is work, Finishers at most: an idle
// Settler runs none, a job no free finisher takes starts one, and one
// that has had no job for finisherIdle returns.
func TestSettlerFinishersOnDemand(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := heldSink{sink: newSink(), hold: make(chan struct{})}
		st := New(Config{Finishers: 4, WantReply: true}, h, WithLogger(slog.New(slog.DiscardHandler)))
		running := func(want int, when string) {
			t.Helper()
			synctest.Wait()
			if n := st.finishersRunning(); n != want {
				t.Fatalf("%s: %d finishers running, want %d", when, n, want)
			}
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { st.Run(ctx); close(done) }()
		running(0, "idle")

		answer := Answer{Outcome: v1.Outcome_OUTCOME_OK, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}}
		for i := range 10 {
			st.Settle(&Record{Offset: int64(i), Attempt: 1, Envelope: envelope(), ReplyTopic: "t"}, answer)
		}
		running(4, "10 replies held")
		close(h.hold)
		for range 10 {
			<-h.settled
		}
		running(4, "just after the burst")
		time.Sleep(finisherIdle)
		running(0, "idle for finisherIdle")

		st.Settle(&Record{Offset: 10, Attempt: 1, Envelope: envelope(), ReplyTopic: "t"}, answer)
		if d := <-h.settled; d.Action != Commit {
			t.Fatalf("after the finishers returned: %v, want commit", d.Action)
		}
		running(1, "one reply later")
		cancel()
		<-done
		running(0, "stopped")
	})
}
