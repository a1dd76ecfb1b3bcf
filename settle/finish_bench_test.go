package settle

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kafkapipe"
)

// replySink is a Sink whose reply takes rtt (the broker's PUBACK) and
// which counts what it settles.
type replySink struct {
	rtt     time.Duration
	done    sync.WaitGroup
	settled chan struct{} // one-at-a-time: each settle, nil: none
}

func (s *replySink) Redeliver(context.Context, *Record) error { return nil }
func (s *replySink) WriteDeadLetter(context.Context, *Record, *kafkapipe.DeadLetter) error {
	return nil
}

func (s *replySink) Reply(context.Context, *Record, []byte) error {
	if s.rtt > 0 {
		time.Sleep(s.rtt)
	}
	return nil
}
func (s *replySink) Settled(*Record, Decision) {
	s.done.Done()
	if s.settled != nil {
		s.settled <- struct{}{}
	}
}

// BenchmarkSettleReply is one answered record through the Settler: its
// reply published (at once, or after a 100 us round trip) and ACKed, 128
// finishers as the bridge runs them; records settled as fast as they
// come, or one at a time (each after the previous one's ACK, as at a
// site's rate).
func BenchmarkSettleReply(b *testing.B) {
	for _, c := range []struct {
		name     string
		rtt      time.Duration
		oneByOne bool
	}{{"flood", 0, false}, {"flood-rtt-100us", 100 * time.Microsecond, false}, {"one-at-a-time", 0, true}} {
		b.Run(c.name, func(b *testing.B) {
			snk := &replySink{rtt: c.rtt}
			if c.oneByOne {
				snk.settled = make(chan struct{}, 1)
			}
			st := New(Config{Finishers: 128, WantReply: true}, snk, WithLogger(slog.New(slog.DiscardHandler)))
			ctx, cancel := context.WithCancel(b.Context())
			done := make(chan struct{})
			go func() { st.Run(ctx); close(done) }()
			r := &Record{Attempt: 1, Envelope: &v1.Envelope{MessageId: "m", RequestId: "r"}, ReplyTopic: "t"}
			a := Answer{Outcome: v1.Outcome_OUTCOME_OK, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}}
			b.ReportAllocs()
			for b.Loop() {
				snk.done.Add(1)
				st.Settle(r, a)
				if c.oneByOne {
					<-snk.settled
				}
			}
			snk.done.Wait()
			cancel()
			<-done
		})
	}
}
