// Package grpcout is the bridge side of the edgebridge.v1.Delivery stream.
//
// A Pool keeps one stream to every backend address its targets resolve to
// and spreads Kafka partitions across the healthy ones: all deliveries of a
// partition go to one stream, in order, so per-device order holds. Each
// stream sends within the backend's credit grant (at most Window), matches
// ACKs (which may arrive out of order) to deliveries, pings with an
// adaptive interval and declares the stream dead when the backend goes
// silent or leaves a delivery un-ACKed past the ACK deadline. When a stream
// ends, its un-ACKed deliveries are resent with the same message id: on the
// same backend once it reconnects (with backoff), or, when another backend
// is up, on the least-loaded other one, which takes over the partitions.
//
// Goroutines: Pool.Run owns one goroutine per backend address; each open
// stream has exactly one sending and one receiving goroutine, plus one that
// watches the connection for GOAWAY; none outlives its stream.
package grpcout

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/stats"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/internal/schedule"
)

// AckFunc receives the backend's ACK for a delivery. It is called exactly
// once per Deliver, from a stream's receiving goroutine, so it must not
// block for long. It returns an error when the ACK's reply breaks the
// contract (the Pool cannot judge a reply without the device's format); the
// Pool reports that as ProblemInvalidReply. A nil ack means the delivery
// expired: its DeliverBy deadline passed before any stream sent it, and no
// backend ever saw it.
type AckFunc func(ack *v1.Ack) error

// delivery is one Deliver call until its ACK. Fields are guarded by Pool.mu.
type delivery struct {
	seq      uint64
	part     *partition
	env      *v1.Envelope
	done     AckFunc
	owner    *link  // the link whose queue or stream holds it
	sentGen  uint64 // the stream it was last sent on (0: none)
	sends    uint32
	finished bool
	deadline time.Time // DeliverBy's: zero never expires
}

// expiredLocked reports whether d is past its deadline and was never sent;
// if so it takes d out of the pool: the caller calls d.done(nil) once it
// released p.mu.
func (p *Pool) expiredLocked(d *delivery, now time.Time) bool {
	if d.finished || d.sends > 0 || d.deadline.IsZero() || now.Before(d.deadline) {
		return false
	}
	delete(p.pending, d.seq)
	d.finished = true
	d.part.pending--
	return true
}

// partition is a Kafka partition's placement. Guarded by Pool.mu.
type partition struct {
	id      int32
	owner   *link
	pending int // deliveries not yet ACKed
}

// Event reports stream state changes to observers (metrics, logs).
type Event struct {
	Kind   EventKind
	Target string // as configured
	Addr   string // the resolved address
	// StreamDown: why; Err is the cause.
	Reason Reason
	Err    error
	// StreamUp, Credit: the backend's grant (capped at Window).
	Credits int
	// Pong: round trip, the backend's load and the ping interval now used.
	RTT      time.Duration
	Load     uint32
	Interval time.Duration
	// Moved: how many partitions moved to this Addr.
	Partitions int
	// ProtocolError: what the backend got wrong (a fixed set, see Problem).
	Problem Problem
}

// Problem is a way a backend broke the Delivery protocol without ending the
// stream; the label of the protocol error metric.
type Problem string

// Problems.
const (
	ProblemUnknownSeq      Problem = "unknown_seq"         // an ACK for no delivery outstanding on the stream (dropped)
	ProblemMessageMismatch Problem = "message_id_mismatch" // an ACK whose message id is not its delivery's (not applied)
	ProblemUnknownOutcome  Problem = v1.ProblemUnknownOutcome
	ProblemUnknownCode     Problem = "unknown_code"         // a reason code this bridge does not know (rendered "unknown")
	ProblemInvalidReply    Problem = v1.ProblemInvalidReply // a reply the AckFunc refused
)

// EventKind enumerates Events.
type EventKind int

// Event kinds.
const (
	StreamUp EventKind = iota
	StreamDown
	Pong
	Credit
	Moved
	ProtocolError
)

// Option configures optional hooks.
type Option func(*options)

type options struct {
	log      *slog.Logger
	hooks    []func(Event)
	dial     func(ctx context.Context, addr string) (net.Conn, error)
	resolve  func(ctx context.Context, target string) ([]string, error)
	newStats func(target, addr string) stats.Handler
	streams  func(up int)
}

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithEventHook adds an observer of stream events; fn must not block or
// call the Pool (some events are reported under its lock).
func WithEventHook(fn func(Event)) Option { return func(o *options) { o.hooks = append(o.hooks, fn) } }

func (o *options) hook(e Event) {
	for _, fn := range o.hooks {
		fn(e)
	}
}

// WithDialer replaces the TCP dialer (tests use in-memory connections).
func WithDialer(fn func(ctx context.Context, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.dial = fn }
}

// WithResolver replaces how a target becomes addresses (host:port each).
// Default: DNS lookup of the host, keeping the port; IP literals as is.
func WithResolver(fn func(ctx context.Context, target string) ([]string, error)) Option {
	return func(o *options) { o.resolve = fn }
}

// WithStreamsHook calls fn with the number of open streams each time it
// changes, in order, under the Pool's lock: fn must not block or call the
// Pool. The bridge sizes its ACK window from it.
func WithStreamsHook(fn func(up int)) Option { return func(o *options) { o.streams = fn } }

// WithStatsHandler installs a gRPC stats handler on each backend connection
// (metrics plug in here; see package grpcmetrics).
func WithStatsHandler(fn func(target, addr string) stats.Handler) Option {
	return func(o *options) { o.newStats = fn }
}

// Pool delivers to a set of backends. It is safe for concurrent use.
type Pool struct {
	cfg Config
	o   options

	mu      sync.Mutex
	seq     uint64
	gen     uint64 // last stream generation handed out
	pending map[uint64]*delivery
	parts   map[int32]*partition
	links   map[string]*link // by address
	up      int              // links with an open stream

	problems problemLog
}

// New returns a Pool; it does no I/O.
func New(cfg Config, opts ...Option) (*Pool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	p := &Pool{
		cfg:     cfg,
		o:       options{log: slog.Default(), resolve: lookup},
		pending: make(map[uint64]*delivery),
		parts:   make(map[int32]*partition),
		links:   make(map[string]*link),
	}
	for _, o := range opts {
		o(&p.o)
	}
	return p, nil
}

// Deliver queues env for the backend that owns partition part and returns
// at once; done is called with the ACK. The Pool does not bound what it
// holds: the caller does (the bridge hands over only records in its ACK
// window), and each stream sends at most its credit grant. Deliveries
// survive stream failures and backend moves: they are resent until ACKed
// or until the Pool stops (then done is never called and the record stays
// un-committed in Kafka).
func (p *Pool) Deliver(part int32, env *v1.Envelope, done AckFunc) {
	p.DeliverBy(part, env, time.Time{}, done)
}

// DeliverBy is Deliver with a deadline for the first send: a delivery no
// stream has sent by then is not sent at all; done gets a nil ack instead
// (within about a second, whether or not a backend is up). Once sent, it is
// delivered like any other. A zero deadline never expires.
func (p *Pool) DeliverBy(part int32, env *v1.Envelope, deadline time.Time, done AckFunc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pt := p.parts[part]
	if pt == nil {
		pt = &partition{id: part}
		p.parts[part] = pt
	}
	if pt.pending == 0 {
		// Nothing of this partition is in flight, so it can move without
		// any risk to its order: place it on the least-loaded backend.
		p.placeLocked(pt)
	}
	p.seq++
	d := &delivery{seq: p.seq, part: pt, env: env, done: done, owner: pt.owner, deadline: deadline}
	p.pending[d.seq] = d
	pt.pending++
	if d.owner != nil {
		d.owner.enqueueLocked(d)
	}
}

// placeLocked moves an idle partition to the least-loaded up link when that
// evens the load out, or to any link when it has none.
func (p *Pool) placeLocked(pt *partition) {
	best := p.leastLoadedLocked(pt.owner)
	switch {
	case best == nil || best == pt.owner:
	case pt.owner == nil || (best.usableLocked() && (!pt.owner.usableLocked() || best.parts+1 < pt.owner.parts)):
		p.moveLocked(pt, best)
	}
}

// leastLoadedLocked returns the usable link with the fewest partitions
// (then the fewest queued deliveries), or, if none is usable, the link with
// the fewest partitions. except is counted without the partition being
// placed.
func (p *Pool) leastLoadedLocked(except *link) *link {
	// Called on the Deliver path: no allocation, ties go to the lower
	// address so placement does not depend on map order.
	type score struct {
		usable       bool
		parts, queue int
		addr         string
	}
	better := func(a, b score) bool {
		if a.usable != b.usable {
			return a.usable
		}
		return cmp.Or(cmp.Compare(a.parts, b.parts), cmp.Compare(a.queue, b.queue), cmp.Compare(a.addr, b.addr)) < 0
	}
	var best *link
	var bs score
	for _, l := range p.links {
		if l.removed {
			continue
		}
		s := score{l.usableLocked(), l.parts, len(l.queue), l.addr}
		if l == except {
			s.parts--
		}
		if best == nil || better(s, bs) {
			best, bs = l, s
		}
	}
	return best
}

func (p *Pool) moveLocked(pt *partition, to *link) {
	if pt.owner != nil {
		pt.owner.parts--
	}
	pt.owner = to
	to.parts++
}

// rebalanceLocked moves every partition whose link is down (or gone) to the
// least-loaded up link, with its pending deliveries in their original order
// at the back of the new link's queue. Nothing of such a partition is in
// flight on a live stream, so per-partition order is kept.
func (p *Pool) rebalanceLocked() {
	moved := map[*partition]bool{}
	for _, pt := range p.parts {
		if pt.owner != nil && pt.owner.upLocked() {
			continue
		}
		to := p.leastLoadedLocked(nil)
		if to == nil || to == pt.owner || (pt.owner != nil && !to.usableLocked()) {
			continue // nowhere better to go
		}
		p.moveLocked(pt, to)
		moved[pt] = true
	}
	if len(moved) == 0 {
		return
	}
	var ds []*delivery
	for _, d := range p.pending {
		if moved[d.part] {
			ds = append(ds, d)
		}
	}
	slices.SortFunc(ds, func(a, b *delivery) int { return cmp.Compare(a.seq, b.seq) })
	counts := map[*link]int{}
	for pt := range moved {
		counts[pt.owner]++
	}
	for _, d := range ds {
		d.owner = d.part.owner
		d.owner.enqueueLocked(d)
	}
	for l, n := range counts {
		p.o.log.Info("grpcout: partitions moved", "target", l.target, "addr", l.addr, "partitions", n)
		p.o.hook(Event{Kind: Moved, Target: l.target, Addr: l.addr, Partitions: n})
	}
}

// ack completes the delivery seq ACKed on st. An ACK for no delivery
// outstanding on st, or whose message id is not its delivery's, is a
// protocol error: reported and not applied (the delivery stays un-ACKed
// and is resent when its ACK deadline passes).
func (p *Pool) ack(l *link, st *stream, a *v1.Ack) {
	p.mu.Lock()
	if _, ok := st.sent[a.GetSeq()]; !ok {
		p.mu.Unlock()
		p.protocolError(l, ProblemUnknownSeq, fmt.Sprintf("ACK for seq %d, which is not outstanding on this stream", a.GetSeq()))
		return
	}
	d := p.pending[a.GetSeq()]
	if d != nil && d.env.GetMessageId() != a.GetMessageId() {
		p.mu.Unlock()
		p.protocolError(l, ProblemMessageMismatch, fmt.Sprintf("ACK for seq %d names message %.40q, the delivery is %s",
			a.GetSeq(), a.GetMessageId(), d.env.GetMessageId()))
		return
	}
	delete(st.sent, a.GetSeq())
	if d != nil {
		delete(p.pending, d.seq)
		d.finished = true
		d.part.pending--
	}
	p.mu.Unlock()
	l.signal()
	if d == nil {
		return // ACKed earlier on another stream
	}
	if _, ok := v1.Outcome_name[int32(a.GetOutcome())]; !ok || a.GetOutcome() == v1.Outcome_OUTCOME_UNSPECIFIED {
		p.protocolError(l, ProblemUnknownOutcome, fmt.Sprintf("outcome %d for message %s", a.GetOutcome(), d.env.GetMessageId()))
	}
	if _, ok := v1.ReasonCode_name[int32(a.GetCode())]; !ok {
		p.protocolError(l, ProblemUnknownCode, fmt.Sprintf("reason code %d for message %s", a.GetCode(), d.env.GetMessageId()))
	}
	if err := d.done(a); err != nil {
		p.protocolError(l, ProblemInvalidReply, fmt.Sprintf("message %s: %v", d.env.GetMessageId(), err))
	}
}

// protocolError reports a backend's protocol error to the event hooks and
// logs it, at most once per problem every problemLogEvery.
func (p *Pool) protocolError(l *link, problem Problem, detail string) {
	p.o.hook(Event{Kind: ProtocolError, Target: l.target, Addr: l.addr, Problem: problem})
	if n, ok := p.problems.due(problem, time.Now()); ok {
		p.o.log.Warn("grpcout: backend broke the protocol", "target", l.target, "addr", l.addr,
			"problem", problem, "detail", detail, "since_last_log", n)
	}
}

// problemLogEvery is the least time between two logs of one Problem.
const problemLogEvery = 10 * time.Second

// problemLog rate-limits protocol error logs per Problem.
type problemLog struct {
	mu     sync.Mutex
	last   map[Problem]time.Time
	missed map[Problem]int
}

// due reports whether problem may be logged at now, and how many were not
// logged since the last time.
func (l *problemLog) due(problem Problem, now time.Time) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.missed = map[Problem]time.Time{}, map[Problem]int{}
	}
	if last, ok := l.last[problem]; ok && now.Sub(last) < problemLogEvery {
		l.missed[problem]++
		return 0, false
	}
	n := l.missed[problem]
	l.last[problem], l.missed[problem] = now, 0
	return n, true
}

// Run keeps streams to every backend address until ctx ends, resolving
// host names again every ResolveInterval. It blocks until every goroutine
// it started has returned.
func (p *Pool) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	wg.Go(func() { p.expireWaiting(ctx) })
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		p.updateLinks(ctx, &wg, p.resolveAll(ctx))
		t.Reset(p.cfg.ResolveInterval)
	}
}

// expireWaiting ends, every second, the deliveries whose DeliverBy deadline
// passed while no stream could send them (no backend up, or no credit). A
// stream about to send one checks too (link.next), so none is sent late.
func (p *Pool) expireWaiting(ctx context.Context) {
	schedule.Every(ctx, time.Second, func(now time.Time) {
		var expired []*delivery
		p.mu.Lock()
		for _, d := range p.pending {
			if p.expiredLocked(d, now) {
				expired = append(expired, d)
			}
		}
		p.mu.Unlock()
		for _, d := range expired {
			_ = d.done(nil)
		}
	})
}

// resolveAll maps each target to its addresses; a target that fails to
// resolve keeps its previous addresses.
func (p *Pool) resolveAll(ctx context.Context) map[string][]string {
	out := map[string][]string{}
	for _, t := range p.cfg.Targets {
		addrs, err := p.o.resolve(ctx, t)
		if err != nil || len(addrs) == 0 {
			p.o.log.Warn("grpcout: resolve target; keeping its known addresses", "target", t, "err", err)
			p.mu.Lock()
			for _, l := range p.links {
				if l.target == t {
					out[t] = append(out[t], l.addr)
				}
			}
			p.mu.Unlock()
			continue
		}
		out[t] = addrs
	}
	return out
}

// updateLinks starts a link for every new address and stops the links of
// addresses that are gone.
func (p *Pool) updateLinks(ctx context.Context, wg *sync.WaitGroup, addrs map[string][]string) {
	want := map[string]string{} // addr -> target
	for t, as := range addrs {
		for _, a := range as {
			want[a] = t
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, l := range p.links {
		if _, ok := want[addr]; !ok && !l.removed {
			l.removed = true
			l.stop()
		}
	}
	for addr, target := range want {
		if l, ok := p.links[addr]; ok && !l.removed {
			continue
		} else if ok {
			continue // still shutting down; the next resolve re-adds it
		}
		l := newLink(p, target, addr)
		lctx, stop := context.WithCancel(ctx)
		l.stop = stop
		p.links[addr] = l
		wg.Go(func() {
			defer stop()
			if err := l.run(lctx); err != nil {
				p.o.log.Error("grpcout: backend link failed", "target", target, "addr", addr, "err", err)
			}
			p.mu.Lock()
			delete(p.links, addr)
			for _, pt := range p.parts {
				if pt.owner == l {
					pt.owner = nil
				}
			}
			p.rebalanceLocked()
			p.mu.Unlock()
		})
	}
	p.rebalanceLocked() // partitions that had no link at all
}

// lookup resolves target's host with DNS; IP literals resolve to themselves.
func lookup(ctx context.Context, target string) ([]string, error) {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return nil, err
	}
	if net.ParseIP(host) != nil {
		return []string{target}, nil
	}
	ips, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("grpcout: resolve %s: %w", host, err)
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.JoinHostPort(ip, port))
	}
	slices.Sort(out)
	return out, nil
}

// LinkStatus describes one backend address.
type LinkStatus struct {
	Target, Addr string
	Up           bool
	// Reason and Err of the last failure while the link is not up.
	Reason Reason
	Err    error
	// While up: since when, the backend's credit grant, deliveries sent and
	// not ACKed, the last heartbeat round trip and the backend's load.
	Since    time.Time
	Credits  int
	InFlight int
	RTT      time.Duration
	Load     int
	// Queued deliveries waiting for this link, and partitions it owns.
	Queued, Partitions int
}

// Status describes every backend address, sorted by address.
func (p *Pool) Status() []LinkStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]LinkStatus, 0, len(p.links))
	for _, l := range p.links {
		s := LinkStatus{Target: l.target, Addr: l.addr, Up: l.upLocked(), Queued: len(l.queue), Partitions: l.parts}
		if st := l.st; st != nil {
			s.Since, s.Credits, s.InFlight = st.up, st.credits, len(st.sent)
			s.RTT, s.Load = time.Duration(st.rtt.Load()), int(st.load.Load())
		} else {
			s.Reason, s.Err = l.lastReason, l.lastErr
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b LinkStatus) int { return cmp.Compare(a.Addr, b.Addr) })
	return out
}

// Up reports whether at least one stream is open.
func (p *Pool) Up() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.links {
		if l.upLocked() {
			return true
		}
	}
	return false
}

// Pending returns the number of deliveries not yet ACKed.
func (p *Pool) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

// streamsChangedLocked reports the number of open streams after one opened
// (delta 1) or closed (-1).
func (p *Pool) streamsChangedLocked(delta int) {
	p.up += delta
	if p.o.streams != nil {
		p.o.streams(p.up)
	}
}

// errNoWelcome is the protocol error of a backend that does not greet.
var errNoWelcome = errors.New("backend did not answer hello with welcome")
