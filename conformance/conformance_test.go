package conformance_test

import (
	"bytes"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/conformance"
	"github.com/edgebridge/edgebridge/kit/grpctest"
	"github.com/edgebridge/edgebridge/payment"
)

// flaw is the one way a test backend breaks the contract.
type flaw int

const (
	none           flaw = iota
	noWelcome           // answers hello with an ack
	noPong              // ignores pings
	noOutcome           // acks without an outcome
	smallWindow         // grants 16 credits, holds 4: deliveries beyond are lost
	swappedIDs          // acks name another delivery's message id
	noDedup             // processes a redelivery again
	legacyDupe          // answers a redelivery OUTCOME_DUPLICATE (before the flag): still conforming
	outOfOrderAcks      // acks each burst newest first: conforming
)

// flawed is a hand-written backend (as one in another language would be):
// correct but for its flaw.
type flawed struct {
	v1.UnimplementedDeliveryServer
	flaw flaw
	mu   sync.Mutex
	seen map[string]*v1.Ack // by message id: the stored answers
}

func (b *flawed) answer(d *v1.Deliver) *v1.Ack {
	env := d.GetEnvelope()
	ack := &v1.Ack{Seq: d.GetSeq(), MessageId: env.GetMessageId(), Outcome: v1.Outcome_OUTCOME_OK,
		Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}}
	if env.GetMessageId() != v1.MessageID(env.GetDeviceId(), env.GetRequestId()) {
		return &v1.Ack{Seq: d.GetSeq(), MessageId: env.GetMessageId(), Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_INVALID_REQUEST}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if prev, ok := b.seen[env.GetMessageId()]; ok && b.flaw != noDedup {
		if prev.GetOutcome() == v1.Outcome_OUTCOME_OK && env.GetFingerprint() != prev.GetReason() {
			return &v1.Ack{Seq: d.GetSeq(), MessageId: env.GetMessageId(), Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_CONFLICT}
		}
		ack.Duplicate = true
		if b.flaw == legacyDupe {
			ack.Outcome, ack.Duplicate = v1.Outcome_OUTCOME_DUPLICATE, false
		}
		return ack
	}
	b.seen[env.GetMessageId()] = &v1.Ack{Outcome: v1.Outcome_OUTCOME_OK, Reason: env.GetFingerprint()}
	if b.flaw == noOutcome {
		ack.Outcome = v1.Outcome_OUTCOME_UNSPECIFIED
	}
	return ack
}

func (b *flawed) Stream(s v1.Delivery_StreamServer) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	var welcome *v1.ServerFrame = &v1.ServerFrame{Frame: &v1.ServerFrame_Welcome{Welcome: &v1.Welcome{BackendId: "flawed"}}}
	if b.flaw == noWelcome {
		welcome = &v1.ServerFrame{Frame: &v1.ServerFrame_Ack{Ack: &v1.Ack{Seq: 1}}}
	}
	if err := s.Send(welcome); err != nil {
		return err
	}
	// Deliveries are answered in batches: what arrived while the last
	// batch was answered (a backend that gathers a batch to commit once).
	var batch []*v1.Deliver
	flush := func() error {
		acks := make([]*v1.Ack, 0, len(batch))
		for _, d := range batch {
			acks = append(acks, b.answer(d))
		}
		if b.flaw == swappedIDs && len(acks) > 1 {
			acks[0].MessageId, acks[1].MessageId = acks[1].MessageId, acks[0].MessageId
		}
		if b.flaw == outOfOrderAcks {
			slices.Reverse(acks)
		}
		batch = batch[:0]
		for _, a := range acks {
			if err := s.Send(&v1.ServerFrame{Frame: &v1.ServerFrame_Ack{Ack: a}}); err != nil {
				return err
			}
		}
		return nil
	}
	frames := make(chan *v1.ClientFrame)
	errc := make(chan error, 1)
	go func() {
		for {
			f, err := s.Recv()
			if err != nil {
				errc <- err
				return
			}
			frames <- f
		}
	}()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-errc:
			return err
		case <-tick.C:
			if err := flush(); err != nil {
				return err
			}
		case f := <-frames:
			switch fr := f.Frame.(type) {
			case *v1.ClientFrame_Ping:
				if b.flaw == noPong {
					continue
				}
				if err := s.Send(&v1.ServerFrame{Frame: &v1.ServerFrame_Pong{Pong: &v1.Pong{Seq: fr.Ping.GetSeq(), PingSentUnixNano: fr.Ping.GetSentUnixNano()}}}); err != nil {
					return err
				}
			case *v1.ClientFrame_Deliver:
				if b.flaw == smallWindow && len(batch) >= 4 {
					continue // lost
				}
				batch = append(batch, fr.Deliver)
			}
		}
	}
}

func serve(t *testing.T, register func(grpc.ServiceRegistrar)) *grpc.ClientConn {
	t.Helper()
	return grpctest.Dial(t, grpctest.Serve(t, grpc.NewServer(), register))
}

func statuses(rep conformance.Report) map[string]conformance.Status {
	out := map[string]conformance.Status{}
	for _, r := range rep {
		out[r.Rule] = r.Status
	}
	return out
}

// The reference backend (the backend helper with paymentd's handler and
// ledger) passes every rule.
func TestPaymentBackendPasses(t *testing.T) {
	ledger, err := payment.OpenLedger(t.TempDir() + "/ledger.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer ledger.Close()
	srv := backend.NewServer(backend.Config{ID: "paymentd"}, payment.Handler(payment.DefaultLimit), ledger)
	conn := serve(t, srv.Register)
	rep := conformance.Run(t.Context(), conn, conformance.Options{Timeout: 5 * time.Second})
	var out bytes.Buffer
	_ = rep.Write(&out)
	for _, r := range rep {
		want := conformance.Pass
		if r.Rule == conformance.RuleKeepalive {
			want = conformance.Skip // not asked for
		}
		if r.Status != want {
			t.Errorf("rule %s: got %s (%s), want %s\n%s", r.Rule, r.Status, r.Detail, want, out.String())
		}
	}
	if f := rep.Failed(); len(f) != 0 {
		t.Fatalf("got failed rules %v, want none", f)
	}
}

// Each flawed backend fails exactly the required rule it breaks; the
// conforming variants fail none.
func TestFlawedBackendsFailTheirRule(t *testing.T) {
	tests := []struct {
		name string
		flaw flaw
		want []string // failed required rules
		warn []string // recommended rules warned about
	}{
		{name: "correct", flaw: none},
		{name: "acks out of order", flaw: outOfOrderAcks},
		{name: "OUTCOME_DUPLICATE from an older backend", flaw: legacyDupe},
		{name: "no welcome", flaw: noWelcome, want: []string{conformance.RuleHandshake}},
		{name: "no pong", flaw: noPong, want: []string{conformance.RuleHeartbeat}},
		{name: "no outcome", flaw: noOutcome, want: []string{conformance.RuleAck}},
		{name: "credits not honoured", flaw: smallWindow, want: []string{conformance.RuleCredits}},
		{name: "acks name other deliveries", flaw: swappedIDs, want: []string{conformance.RuleAckMatch}},
		{name: "no dedup", flaw: noDedup, want: []string{conformance.RuleDuplicate}, warn: []string{conformance.RuleConflict}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := &flawed{flaw: tc.flaw, seen: map[string]*v1.Ack{}}
			conn := serve(t, func(r grpc.ServiceRegistrar) { v1.RegisterDeliveryServer(r, b) })
			rep := conformance.Run(t.Context(), conn, conformance.Options{Timeout: time.Second})
			var out bytes.Buffer
			_ = rep.Write(&out)
			if got := rep.Failed(); !slices.Equal(got, tc.want) {
				t.Fatalf("got failed rules %v, want %v\n%s", got, tc.want, out.String())
			}
			var warned []string
			for _, r := range rep {
				if r.Status == conformance.Warn && r.Rule != conformance.RuleHealth {
					warned = append(warned, r.Rule)
				}
			}
			if !slices.Equal(warned, tc.warn) {
				t.Fatalf("got warnings %v, want %v\n%s", warned, tc.warn, out.String())
			}
			if st := statuses(rep)[conformance.RuleHealth]; st != conformance.Warn {
				t.Fatalf("health: got %s, want a warning (no health service)", st)
			}
			for _, rule := range tc.want {
				if !strings.Contains(out.String(), rule) {
					t.Fatalf("report does not name %s:\n%s", rule, out.String())
				}
			}
		})
	}
}

// A backend that keeps grpc-go's default keepalive enforcement (pings at
// most every 5 minutes) closes the bridge's connection: the keepalive rule
// fails; with the bridge's enforcement policy it passes.
func TestKeepaliveRule(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    []grpc.ServerOption
		wantBad bool
	}{
		{name: "default enforcement", wantBad: true},
		{name: "bridge's enforcement", opts: []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(backend.ServerEnforcement)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			gs := grpc.NewServer(tc.opts...)
			backend.NewServer(backend.Config{}, payment.Handler(payment.DefaultLimit), nil).Register(gs)
			go func() { _ = gs.Serve(ln) }()
			t.Cleanup(gs.Stop)
			dial := func(extra ...grpc.DialOption) (*grpc.ClientConn, error) {
				return grpc.NewClient(ln.Addr().String(), append(extra, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
			}
			conn, err := dial()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			rep := conformance.Run(t.Context(), conn, conformance.Options{Timeout: 5 * time.Second, Keepalive: true, Dial: dial})
			var out bytes.Buffer
			_ = rep.Write(&out)
			want := []string(nil)
			if tc.wantBad {
				want = []string{conformance.RuleKeepalive}
			}
			if got := rep.Failed(); !slices.Equal(got, want) {
				t.Fatalf("got failed rules %v, want %v\n%s", got, want, out.String())
			}
		})
	}
}
