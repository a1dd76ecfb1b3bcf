// Package conformance checks a backend against the edgebridge.v1.Delivery
// contract the way a bridge would use it, for backend authors in any
// language (`edgebridge backend-check -target ADDR`). Each Rule is run on a
// fresh stream and reports pass, fail or a warning; Required rules failing
// fail the run. The deliveries carry payment requests from a device named
// "backend-check" with request ids unique to the run, so a durable dedup
// store is never confused by an earlier run.
package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/internal/defaults"
	"github.com/edgebridge/edgebridge/settle"
	"github.com/edgebridge/edgebridge/transcoder"
)

// Level says what a failed rule means.
type Level string

const (
	Required    Level = "required"    // the bridge cannot work with the backend: the run fails
	Recommended Level = "recommended" // the bridge works, a site would regret it: a warning
)

// Status is a rule's result.
type Status string

const (
	Pass Status = "pass"
	Fail Status = "FAIL"
	Warn Status = "warn"
	Skip Status = "skip" // a rule it depends on failed, or it was not asked for
)

// Result is one rule's outcome.
type Result struct {
	Rule   string
	Level  Level
	Status Status
	Detail string
}

// Report is the outcome of a run.
type Report []Result

// Failed lists the required rules that failed.
func (r Report) Failed() []string {
	var out []string
	for _, res := range r {
		if res.Status == Fail {
			out = append(out, res.Rule)
		}
	}
	return out
}

// Write prints the report as a table.
func (r Report) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tLEVEL\tRESULT\tDETAIL")
	for _, res := range r {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", res.Rule, res.Level, res.Status, res.Detail)
	}
	return tw.Flush()
}

// Options configures a run.
type Options struct {
	// Timeout bounds each wait for a frame: the Welcome, a Pong, an Ack.
	// Default: 10s (the bridge's open timeout; its Ack deadline is 30s).
	Timeout time.Duration
	// Window is the Hello.window sent. Default: 16.
	Window int
	// Keepalive runs the keepalive rule: an idle connection pinged every
	// 10s (the bridge's floor) must stay up for KeepaliveHold. Dial is
	// then required.
	Keepalive     bool
	KeepaliveHold time.Duration // Default: 45s.
	// Dial opens another connection to the backend with extra options
	// (the keepalive rule's). It must apply the same TLS and token.
	Dial func(extra ...grpc.DialOption) (*grpc.ClientConn, error)
}

func (o Options) withDefaults() Options {
	defaults.Positive(&o.Timeout, 10*time.Second)
	defaults.Positive(&o.Window, 16)
	defaults.Positive(&o.KeepaliveHold, 45*time.Second)
	return o
}

// Rule names, in the order they run.
const (
	RuleHandshake = "handshake" // Welcome answers Hello within the timeout
	RuleHeartbeat = "heartbeat" // every Ping is answered by a Pong echoing it
	RuleAck       = "ack"       // a delivery is answered by a valid Ack
	RuleCredits   = "credits"   // a full grant of deliveries is taken and each is ACKed once
	RuleAckMatch  = "ack-match" // Acks name their delivery's seq and message id (any order)
	RuleDuplicate = "duplicate" // a redelivery gets the stored result, flagged as a duplicate
	RuleConflict  = "conflict"  // a reused message id with other content is a REJECT/conflict
	RuleInvalid   = "invalid"   // an envelope breaking the contract is a REJECT/invalid_request
	RuleHealth    = "health"    // grpc.health.v1 answers SERVING for edgebridge.v1.Delivery
	RuleKeepalive = "keepalive" // pings every 10s do not get the connection closed
	healthService = "edgebridge.v1.Delivery"
)

// Run checks the backend behind conn and returns one Result per rule.
func Run(ctx context.Context, conn *grpc.ClientConn, o Options) Report {
	o = o.withDefaults()
	c := &checker{client: v1.NewDeliveryClient(conn), conn: conn, o: o, run: runID()}
	var rep Report
	add := func(rule string, level Level, err error, passDetail string) Result {
		res := Result{Rule: rule, Level: level, Status: Pass, Detail: passDetail}
		var skip skipped
		switch {
		case errors.As(err, &skip):
			res.Status, res.Detail = Skip, skip.why
		case err != nil && level == Required:
			res.Status, res.Detail = Fail, err.Error()
		case err != nil:
			res.Status, res.Detail = Warn, err.Error()
		}
		rep = append(rep, res)
		return res
	}

	detail, err := c.handshake(ctx)
	up := add(RuleHandshake, Required, err, detail).Status == Pass
	need := func(f func(context.Context) (string, error)) (string, error) {
		if !up {
			return "", skipped{"no handshake"}
		}
		return f(ctx)
	}
	d, err := need(c.heartbeat)
	add(RuleHeartbeat, Required, err, d)
	d, err = need(c.ack)
	ackOK := add(RuleAck, Required, err, d).Status == Pass
	d, err = need(c.credits)
	add(RuleCredits, Required, err, d)
	d, err = need(c.ackMatch)
	add(RuleAckMatch, Required, err, d)
	needAck := func(f func(context.Context) (string, error)) (string, error) {
		if !ackOK {
			return "", skipped{"no valid ack"}
		}
		return need(f)
	}
	d, err = needAck(c.duplicate)
	add(RuleDuplicate, Required, err, d)
	d, err = needAck(c.conflict)
	add(RuleConflict, Recommended, err, d)
	d, err = needAck(c.invalid)
	add(RuleInvalid, Recommended, err, d)
	d, err = c.health(ctx)
	add(RuleHealth, Recommended, err, d)
	if o.Keepalive {
		d, err = need(c.keepalive)
	} else {
		d, err = "", skipped{"not asked for (-keepalive; takes about a minute)"}
	}
	add(RuleKeepalive, Required, err, d)
	return rep
}

type skipped struct{ why string }

func (s skipped) Error() string { return s.why }

type checker struct {
	client v1.DeliveryClient
	conn   *grpc.ClientConn
	o      Options
	run    string
	n      int // requests made
}

func runID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// deviceID is the device every check delivery comes from.
const deviceID = "backend-check"

// request returns a fresh, valid envelope of a small payment.
func (c *checker) request(amount int64) *v1.Envelope {
	c.n++
	rid := fmt.Sprintf("check-%s-%d", c.run, c.n)
	return envelopeOf(&v1.PaymentRequest{RequestId: rid, AmountMinor: amount, Currency: "EUR", MerchantId: "m-check"})
}

// envelopeOf wraps req as the bridge does.
func envelopeOf(req *v1.PaymentRequest) *v1.Envelope {
	payload, _ := proto.Marshal(req) // a PaymentRequest of valid strings always marshals
	return &v1.Envelope{
		MessageId: v1.MessageID(deviceID, req.GetRequestId()), DeviceId: deviceID, RequestId: req.GetRequestId(),
		SourceTopic: "payment/request/" + deviceID, ReceivedAtUnixNano: time.Now().UnixNano(),
		ContentType: transcoder.ContentTypePaymentRequest, Payload: payload, Attempt: 1, Fingerprint: v1.Fingerprint(req),
	}
}

// session is one open stream: this goroutine sends, a reader receives.
type session struct {
	s       v1.Delivery_StreamClient
	cancel  context.CancelFunc
	frames  chan *v1.ServerFrame
	err     chan error
	timeout time.Duration
	seq     uint64
	credits int // the current grant
	window  int
}

func (c *checker) open(ctx context.Context) (*session, *v1.Welcome, error) {
	sctx, cancel := context.WithCancel(ctx)
	s, err := c.client.Stream(sctx)
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("open stream: %w", err)
	}
	ss := &session{s: s, cancel: cancel, frames: make(chan *v1.ServerFrame, 4*c.o.Window+16), err: make(chan error, 1),
		timeout: c.o.Timeout, window: c.o.Window}
	go func() {
		for {
			f, err := s.Recv()
			if err != nil {
				ss.err <- err
				close(ss.frames)
				return
			}
			ss.frames <- f
		}
	}()
	if err := s.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Hello{Hello: &v1.Hello{BridgeId: "backend-check", Window: uint32(c.o.Window)}}}); err != nil {
		ss.close()
		return nil, nil, fmt.Errorf("send hello: %w", err)
	}
	f, err := ss.next(ctx)
	if err != nil {
		ss.close()
		return nil, nil, fmt.Errorf("waiting for welcome: %w", err)
	}
	w := f.GetWelcome()
	if w == nil {
		ss.close()
		return nil, nil, fmt.Errorf("first frame is %s, want welcome", frameName(f))
	}
	ss.credits = c.o.Window
	if w.Credits != nil {
		ss.credits = min(int(w.GetCredits()), c.o.Window)
	}
	return ss, w, nil
}

func (s *session) close() {
	_ = s.s.CloseSend()
	s.cancel()
}

// next returns the next frame other than a Credit (which it applies).
func (s *session) next(ctx context.Context) (*v1.ServerFrame, error) {
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	for {
		select {
		case f, ok := <-s.frames:
			if !ok {
				err := <-s.err
				s.err <- err
				return nil, fmt.Errorf("stream ended: %w", err)
			}
			if cr := f.GetCredit(); cr != nil {
				s.credits = min(int(cr.GetCredits()), s.window)
				continue
			}
			return f, nil
		case <-t.C:
			return nil, fmt.Errorf("nothing within %s", s.timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// waitCredits waits until the grant is at least 1 (a backend may open paused).
func (s *session) waitCredits(ctx context.Context) error {
	for s.credits == 0 {
		f, err := s.next(ctx)
		if err != nil {
			return fmt.Errorf("paused (credits 0) and no Credit frame: %w", err)
		}
		if f.GetAck() != nil {
			return errors.New("an Ack while nothing was delivered")
		}
	}
	return nil
}

func (s *session) deliver(env *v1.Envelope, resends uint32) (uint64, error) {
	s.seq++
	err := s.s.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: s.seq, Envelope: env, Resends: resends}}})
	if err != nil {
		return 0, fmt.Errorf("send deliver: %w", err)
	}
	return s.seq, nil
}

// ack waits for the next Ack, skipping Pongs.
func (s *session) ack(ctx context.Context) (*v1.Ack, error) {
	for {
		f, err := s.next(ctx)
		if err != nil {
			return nil, fmt.Errorf("waiting for an ack: %w", err)
		}
		if a := f.GetAck(); a != nil {
			return a, nil
		}
		if f.GetPong() == nil && f.GetDrain() == nil {
			return nil, fmt.Errorf("unexpected %s frame", frameName(f))
		}
	}
}

// roundTrip delivers env and returns its Ack, checked to name it.
func (s *session) roundTrip(ctx context.Context, env *v1.Envelope, resends uint32) (*v1.Ack, error) {
	if err := s.waitCredits(ctx); err != nil {
		return nil, err
	}
	seq, err := s.deliver(env, resends)
	if err != nil {
		return nil, err
	}
	a, err := s.ack(ctx)
	if err != nil {
		return nil, err
	}
	if a.GetSeq() != seq || a.GetMessageId() != env.GetMessageId() {
		return nil, fmt.Errorf("ack names seq %d message %.40q, want seq %d message %s", a.GetSeq(), a.GetMessageId(), seq, env.GetMessageId())
	}
	return a, nil
}

func frameName(f *v1.ServerFrame) string {
	switch f.Frame.(type) {
	case *v1.ServerFrame_Welcome:
		return "welcome"
	case *v1.ServerFrame_Ack:
		return "ack"
	case *v1.ServerFrame_Credit:
		return "credit"
	case *v1.ServerFrame_Pong:
		return "pong"
	case *v1.ServerFrame_Drain:
		return "drain"
	}
	return "empty"
}

func (c *checker) withSession(ctx context.Context, f func(*session) (string, error)) (string, error) {
	s, _, err := c.open(ctx)
	if err != nil {
		return "", err
	}
	defer s.close()
	return f(s)
}

func (c *checker) handshake(ctx context.Context) (string, error) {
	start := time.Now()
	s, w, err := c.open(ctx)
	if err != nil {
		return "", err
	}
	s.close()
	grant := "absent (the bridge's window)"
	if w.Credits != nil {
		grant = fmt.Sprint(w.GetCredits())
	}
	return fmt.Sprintf("welcome from %.40q in %s, credits %s", w.GetBackendId(), time.Since(start).Round(time.Millisecond), grant), nil
}

func (c *checker) heartbeat(ctx context.Context) (string, error) {
	return c.withSession(ctx, func(s *session) (string, error) {
		var worst time.Duration
		for i := uint64(1); i <= 3; i++ {
			sent := time.Now()
			if err := s.s.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Ping{Ping: &v1.Ping{Seq: i, SentUnixNano: sent.UnixNano()}}}); err != nil {
				return "", fmt.Errorf("send ping: %w", err)
			}
			f, err := s.next(ctx)
			if err != nil {
				return "", fmt.Errorf("ping %d not answered: %w", i, err)
			}
			p := f.GetPong()
			if p == nil {
				return "", fmt.Errorf("ping %d answered by a %s frame, want pong", i, frameName(f))
			}
			if p.GetSeq() != i || p.GetPingSentUnixNano() != sent.UnixNano() {
				return "", fmt.Errorf("pong echoes seq %d time %d, want %d and %d", p.GetSeq(), p.GetPingSentUnixNano(), i, sent.UnixNano())
			}
			if p.GetLoadPercent() > 100 {
				return "", fmt.Errorf("pong load_percent %d, want 0-100", p.GetLoadPercent())
			}
			worst = max(worst, time.Since(sent))
		}
		return fmt.Sprintf("3 pings answered, slowest %s", worst.Round(time.Microsecond)), nil
	})
}

// checkAck reports what is wrong with a's outcome and reply for env.
func checkAck(env *v1.Envelope, a *v1.Ack) error {
	if _, ok := v1.Outcome_name[int32(a.GetOutcome())]; !ok || a.GetOutcome() == v1.Outcome_OUTCOME_UNSPECIFIED {
		return fmt.Errorf("outcome %d: set OK, RETRY or REJECT", a.GetOutcome())
	}
	if _, ok := v1.ReasonCode_name[int32(a.GetCode())]; !ok {
		return fmt.Errorf("reason code %d is not a ReasonCode", a.GetCode())
	}
	if _, err := settle.Render(env, settle.FromAck(a)); err != nil {
		return fmt.Errorf("invalid reply: %w", err)
	}
	return nil
}

func describe(a *v1.Ack) string {
	s := strings.TrimPrefix(a.GetOutcome().String(), "OUTCOME_")
	if c := transcoder.CodeName(a.GetCode()); c != "" {
		s += "/" + c
	}
	if r := a.GetReply(); r != nil {
		s += ", reply " + transcoder.StatusName(r.GetStatus())
	} else if len(a.GetRawReply()) > 0 {
		s += fmt.Sprintf(", raw reply %d bytes", len(a.GetRawReply()))
	}
	return s
}

func (c *checker) ack(ctx context.Context) (string, error) {
	return c.withSession(ctx, func(s *session) (string, error) {
		env := c.request(100)
		start := time.Now()
		a, err := s.roundTrip(ctx, env, 0)
		if err != nil {
			return "", err
		}
		if err := checkAck(env, a); err != nil {
			return "", err
		}
		if a.GetDuplicate() {
			return "", errors.New("a first delivery answered as a duplicate")
		}
		return fmt.Sprintf("%s in %s", describe(a), time.Since(start).Round(time.Microsecond)), nil
	})
}

// burst delivers up to limit deliveries (the whole grant if smaller) at
// once and collects the Acks.
func (c *checker) burst(ctx context.Context, s *session, limit int) (sent map[uint64]*v1.Envelope, acks []*v1.Ack, err error) {
	if err := s.waitCredits(ctx); err != nil {
		return nil, nil, err
	}
	n := min(s.credits, limit)
	sent = make(map[uint64]*v1.Envelope, n)
	for range n {
		env := c.request(100)
		seq, err := s.deliver(env, 0)
		if err != nil {
			return nil, nil, err
		}
		sent[seq] = env
	}
	for len(acks) < n {
		a, err := s.ack(ctx)
		if err != nil {
			return sent, acks, fmt.Errorf("%d of %d deliveries ACKed: %w", len(acks), n, err)
		}
		acks = append(acks, a)
	}
	return sent, acks, nil
}

func (c *checker) credits(ctx context.Context) (string, error) {
	return c.withSession(ctx, func(s *session) (string, error) {
		sent, acks, err := c.burst(ctx, s, s.credits)
		if err != nil {
			return "", err
		}
		seen := map[uint64]bool{}
		for _, a := range acks {
			if sent[a.GetSeq()] == nil || seen[a.GetSeq()] {
				return "", fmt.Errorf("ack for seq %d, which is not outstanding", a.GetSeq())
			}
			seen[a.GetSeq()] = true
		}
		return fmt.Sprintf("a grant of %d deliveries taken at once, each ACKed once", len(sent)), nil
	})
}

func (c *checker) ackMatch(ctx context.Context) (string, error) {
	return c.withSession(ctx, func(s *session) (string, error) {
		// A few at once show the matching; the credits rule takes the
		// whole grant.
		sent, acks, err := c.burst(ctx, s, 4)
		if err != nil {
			return "", err
		}
		inOrder := true
		var last uint64
		for _, a := range acks {
			env := sent[a.GetSeq()]
			if env == nil {
				return "", fmt.Errorf("ack for seq %d, which is not outstanding", a.GetSeq())
			}
			if a.GetMessageId() != env.GetMessageId() {
				return "", fmt.Errorf("ack for seq %d names message %.40q, the delivery is %s", a.GetSeq(), a.GetMessageId(), env.GetMessageId())
			}
			inOrder = inOrder && a.GetSeq() > last
			last = a.GetSeq()
		}
		order := "in delivery order"
		if !inOrder {
			order = "out of order (allowed)"
		}
		return fmt.Sprintf("%d acks name their deliveries, %s", len(acks), order), nil
	})
}

func (c *checker) duplicate(ctx context.Context) (string, error) {
	return c.withSession(ctx, func(s *session) (string, error) {
		env := c.request(100)
		first, err := s.roundTrip(ctx, env, 0)
		if err != nil {
			return "", err
		}
		if o := first.GetOutcome(); o != v1.Outcome_OUTCOME_OK && o != v1.Outcome_OUTCOME_REJECT {
			return "", fmt.Errorf("first delivery answered %s; the check needs a final answer (OK or REJECT)", describe(first))
		}
		again := cloneForResend(env)
		a, err := s.roundTrip(ctx, again, 1)
		if err != nil {
			return "", fmt.Errorf("redelivery: %w", err)
		}
		if a.GetOutcome() == v1.Outcome_OUTCOME_DUPLICATE {
			return "OUTCOME_DUPLICATE (before the duplicate flag): accepted, treated like OK", nil
		}
		if !a.GetDuplicate() {
			return "", fmt.Errorf("redelivery answered %s without the duplicate flag: processed twice?", describe(a))
		}
		r1, _ := settle.Render(env, settle.FromAck(first))
		r2, _ := settle.Render(again, settle.FromAck(a))
		if a.GetOutcome() != first.GetOutcome() || a.GetCode() != first.GetCode() || string(r1) != string(r2) {
			return "", fmt.Errorf("redelivery answered %s (reply %q), the first answer was %s (reply %q): not the stored result",
				describe(a), r2, describe(first), r1)
		}
		return fmt.Sprintf("redelivery answered %s with the duplicate flag and the stored reply", describe(a)), nil
	})
}

// cloneForResend is env as the bridge resends it.
func cloneForResend(env *v1.Envelope) *v1.Envelope {
	e := proto.CloneOf(env)
	e.Attempt = 2
	return e
}

func (c *checker) conflict(ctx context.Context) (string, error) {
	return c.withSession(ctx, func(s *session) (string, error) {
		env := c.request(100)
		if _, err := s.roundTrip(ctx, env, 0); err != nil {
			return "", err
		}
		// The same device and request id (so the same message id) for a
		// different amount: what a device reusing a request id sends.
		other := envelopeOf(&v1.PaymentRequest{RequestId: env.GetRequestId(), AmountMinor: 250, Currency: "EUR", MerchantId: "m-check"})
		a, err := s.roundTrip(ctx, other, 0)
		if err != nil {
			return "", err
		}
		if a.GetOutcome() != v1.Outcome_OUTCOME_REJECT || a.GetCode() != v1.ReasonCode_REASON_CODE_CONFLICT {
			return "", fmt.Errorf("same message id, other content answered %s, want REJECT/conflict", describe(a))
		}
		return "answered REJECT/conflict", nil
	})
}

func (c *checker) invalid(ctx context.Context) (string, error) {
	return c.withSession(ctx, func(s *session) (string, error) {
		env := c.request(100)
		env.MessageId = strings.Repeat("0", 32) // not MessageID(device, request)
		a, err := s.roundTrip(ctx, env, 0)
		if err != nil {
			return "", err
		}
		if a.GetOutcome() != v1.Outcome_OUTCOME_REJECT || a.GetCode() != v1.ReasonCode_REASON_CODE_INVALID_REQUEST {
			return "", fmt.Errorf("a message id that is not MessageID(device_id, request_id) answered %s, want REJECT/invalid_request", describe(a))
		}
		return "answered REJECT/invalid_request", nil
	})
}

func (c *checker) health(ctx context.Context) (string, error) {
	hctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	r, err := healthpb.NewHealthClient(c.conn).Check(hctx, &healthpb.HealthCheckRequest{Service: healthService})
	if err != nil {
		return "", fmt.Errorf("grpc.health.v1 Check(%q): %w (optional: without it the bridge reconnects blind)", healthService, err)
	}
	if r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return "", fmt.Errorf("grpc.health.v1 says %s", r.GetStatus())
	}
	return "SERVING", nil
}

func (c *checker) keepalive(ctx context.Context) (string, error) {
	if c.o.Dial == nil {
		return "", errors.New("no dialer for a second connection")
	}
	conn, err := c.o.Dial(grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	kc := &checker{client: v1.NewDeliveryClient(conn), conn: conn, o: c.o, run: c.run + "k"}
	s, _, err := kc.open(ctx)
	if err != nil {
		return "", err
	}
	defer s.close()
	// An idle stream: only HTTP/2 pings cross the connection.
	t := time.NewTimer(c.o.KeepaliveHold)
	defer t.Stop()
	select {
	case err := <-s.err:
		return "", fmt.Errorf("connection closed while idle with keepalive pings every 10s: %w (permit pings every 10s, also without calls)", err)
	case <-t.C:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if _, err := s.roundTrip(ctx, kc.request(100), 0); err != nil {
		return "", fmt.Errorf("after %s idle: %w", c.o.KeepaliveHold, err)
	}
	return fmt.Sprintf("idle %s with pings every 10s, still up", c.o.KeepaliveHold), nil
}
