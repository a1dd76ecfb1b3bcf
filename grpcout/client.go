// Package grpcout is the bridge side of the edgebridge.v1.Delivery stream:
// it sends envelopes to one backend within a bounded window, matches ACKs
// (which may arrive out of order) to their deliveries, and keeps the stream
// alive: when it fails it reconnects with backoff and resends every
// delivery that was not yet ACKed, with the same message id.
package grpcout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

// Sentinel errors that end a stream; all of them lead to a reconnect.
var (
	ErrHeartbeatTimeout = errors.New("grpcout: no frame from backend within the heartbeat timeout")
	ErrDrained          = errors.New("grpcout: backend drained the stream")
	ErrBadHandshake     = errors.New("grpcout: backend did not answer hello with welcome")
)

// Config configures a Client. Zero values mean the default.
type Config struct {
	// Target is the backend address (host:port or any gRPC target). Required.
	Target string
	// BridgeID is sent in Hello. Default: "edgebridge".
	BridgeID string
	// Window is the most un-ACKed deliveries to this backend. Default: 128.
	Window int
	// Backoff between stream attempts.
	Backoff Backoff
	// Heartbeat settings of the application-level ping/pong.
	Heartbeat Heartbeat
	// OpenTimeout bounds opening a stream up to the Welcome. Default: 10s.
	OpenTimeout time.Duration
}

// Backoff is exponential backoff with jitter.
type Backoff struct {
	Initial time.Duration // Default: 1s.
	Max     time.Duration // Default: 30s.
	Jitter  float64       // fraction, ± around the delay. Default: 0.2.
	// ResetAfter: a stream that stayed up this long resets the delay. Default: 30s.
	ResetAfter time.Duration
}

// Heartbeat configures ping/pong on the stream.
type Heartbeat struct {
	Interval time.Duration // Default: 5s (the backend's Welcome may override it).
	Timeout  time.Duration // no frame for this long ends the stream. Default: 3 x Interval.
}

func (c Config) withDefaults() Config {
	if c.BridgeID == "" {
		c.BridgeID = "edgebridge"
	}
	if c.Window <= 0 {
		c.Window = 128
	}
	if c.Backoff.Initial <= 0 {
		c.Backoff.Initial = time.Second
	}
	if c.Backoff.Max <= 0 {
		c.Backoff.Max = 30 * time.Second
	}
	if c.Backoff.Jitter <= 0 {
		c.Backoff.Jitter = 0.2
	}
	if c.Backoff.ResetAfter <= 0 {
		c.Backoff.ResetAfter = 30 * time.Second
	}
	if c.Heartbeat.Interval <= 0 {
		c.Heartbeat.Interval = 5 * time.Second
	}
	if c.Heartbeat.Timeout <= 0 {
		c.Heartbeat.Timeout = 3 * c.Heartbeat.Interval
	}
	if c.OpenTimeout <= 0 {
		c.OpenTimeout = 10 * time.Second
	}
	return c
}

// AckFunc receives the backend's ACK for a delivery. It is called exactly
// once per Deliver, from the stream's receiving goroutine, so it must not
// block for long.
type AckFunc func(ack *v1.Ack)

type pending struct {
	seq     uint64
	env     *v1.Envelope
	done    AckFunc
	sentGen uint64 // stream generation it was last sent on; 0 = never
}

// Client delivers to one backend. It is safe for concurrent use.
type Client struct {
	cfg  Config
	log  *slog.Logger
	hook func(Event)

	slots chan struct{} // window: one token per un-ACKed delivery
	queue chan uint64   // seqs waiting to be sent

	mu      sync.Mutex
	seq     uint64
	pending map[uint64]*pending

	gen atomic.Uint64 // current stream generation
	up  atomic.Bool
}

// Event reports stream state changes to observers (metrics, logs).
type Event struct {
	Kind   EventKind
	Target string
	Err    error         // for StreamDown
	RTT    time.Duration // for Pong
}

// EventKind enumerates Events.
type EventKind int

// Event kinds.
const (
	StreamUp EventKind = iota
	StreamDown
	Pong
)

// Option configures optional hooks.
type Option func(*Client)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *Client) { c.log = l } }

// WithEventHook observes stream events; fn must not block.
func WithEventHook(fn func(Event)) Option { return func(c *Client) { c.hook = fn } }

// New returns a Client; it does no I/O.
func New(cfg Config, opts ...Option) (*Client, error) {
	if cfg.Target == "" {
		return nil, errors.New("grpcout: target is required")
	}
	cfg = cfg.withDefaults()
	c := &Client{
		cfg:     cfg,
		log:     slog.Default(),
		hook:    func(Event) {},
		slots:   make(chan struct{}, cfg.Window),
		queue:   make(chan uint64, 2*cfg.Window),
		pending: make(map[uint64]*pending),
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Up reports whether a stream is open.
func (c *Client) Up() bool { return c.up.Load() }

// InFlight returns the number of un-ACKed deliveries.
func (c *Client) InFlight() int { return len(c.slots) }

// Deliver queues env for the backend and returns once it is queued; done
// is called with the ACK. It blocks while Window deliveries are un-ACKed.
// Deliveries survive stream failures: they are resent until ACKed or until
// the Client stops (then done is never called and the record stays
// un-committed in Kafka).
func (c *Client) Deliver(ctx context.Context, env *v1.Envelope, done AckFunc) error {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	c.mu.Lock()
	c.seq++
	seq := c.seq
	c.pending[seq] = &pending{seq: seq, env: env, done: done}
	c.mu.Unlock()
	select {
	case c.queue <- seq:
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, seq)
		c.mu.Unlock()
		<-c.slots
		return ctx.Err()
	}
}

// Run keeps a stream to the backend open until ctx ends, reconnecting with
// backoff. It blocks until every goroutine it started has returned.
func (c *Client) Run(ctx context.Context) error {
	conn, err := grpc.NewClient(c.cfg.Target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(ClientKeepalive),
	)
	if err != nil {
		return fmt.Errorf("grpcout: %s: %w", c.cfg.Target, err)
	}
	defer conn.Close()
	client := v1.NewDeliveryClient(conn)

	delay := c.cfg.Backoff.Initial
	for {
		started := time.Now()
		err := c.runStream(ctx, client)
		c.up.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		c.hook(Event{Kind: StreamDown, Target: c.cfg.Target, Err: err})
		if time.Since(started) >= c.cfg.Backoff.ResetAfter {
			delay = c.cfg.Backoff.Initial
		}
		wait := delay
		if errors.Is(err, ErrDrained) {
			wait = 0 // the backend asked us to move on; not a failure
		}
		c.log.Warn("grpcout: stream ended", "target", c.cfg.Target, "err", err, "retry_in", wait)
		if !sleep(ctx, c.cfg.Backoff.jittered(wait)) {
			return nil
		}
		if wait > 0 {
			delay = c.cfg.Backoff.next(delay)
		}
	}
}

// next is the delay after d: doubled, capped at Max.
func (b Backoff) next(d time.Duration) time.Duration { return min(2*d, b.Max) }

// jittered spreads d by ±Jitter so many bridges do not reconnect in step.
func (b Backoff) jittered(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	f := 1 + b.Jitter*(2*rand.Float64()-1)
	return time.Duration(float64(d) * f)
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// stream is the per-stream state shared by its sender and receiver.
type stream struct {
	gen      uint64
	s        v1.Delivery_StreamClient
	credits  atomic.Int64  // the backend's grant
	inflight atomic.Int64  // sent on this stream and not yet ACKed
	wake     chan struct{} // an ACK or credit arrived
	draining atomic.Bool
	lastRecv atomic.Int64 // unix nanos of the last frame received
}

func (st *stream) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (c *Client) runStream(ctx context.Context, client v1.DeliveryClient) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Until the Welcome arrives, the open timeout cancels the stream.
	openTimer := time.AfterFunc(c.cfg.OpenTimeout, cancel)
	s, err := client.Stream(sctx)
	if err != nil {
		return fmt.Errorf("grpcout: open stream: %w", err)
	}
	if err := s.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Hello{Hello: &v1.Hello{BridgeId: c.cfg.BridgeID, Window: uint32(c.cfg.Window)}}}); err != nil {
		return fmt.Errorf("grpcout: send hello: %w", err)
	}
	first, err := s.Recv()
	if !openTimer.Stop() {
		return fmt.Errorf("grpcout: no welcome within %s", c.cfg.OpenTimeout)
	}
	if err != nil {
		return fmt.Errorf("grpcout: await welcome: %w", err)
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return ErrBadHandshake
	}
	st := &stream{gen: c.gen.Add(1), s: s, wake: make(chan struct{}, 1)}
	st.credits.Store(int64(c.cfg.Window))
	if w := welcome.GetCredits(); w > 0 {
		st.credits.Store(int64(w))
	}
	interval := c.cfg.Heartbeat.Interval
	if ms := welcome.GetHeartbeatIntervalMs(); ms > 0 {
		interval = time.Duration(ms) * time.Millisecond
	}
	st.lastRecv.Store(time.Now().UnixNano())
	c.up.Store(true)
	c.hook(Event{Kind: StreamUp, Target: c.cfg.Target})
	c.log.Info("grpcout: stream up", "target", c.cfg.Target, "backend", welcome.GetBackendId(), "credits", st.credits.Load())

	errc := make(chan error, 1)
	go func() {
		err := c.receive(st)
		cancel() // a dead stream stops the sender at once
		errc <- err
	}()
	sendErr := c.send(sctx, st, interval)
	cancel() // unblocks the receiver
	recvErr := <-errc
	if recvErr != nil && (sendErr == nil || errors.Is(sendErr, context.Canceled)) {
		return recvErr // the receiver saw the cause
	}
	return sendErr
}

// send is the stream's only sending goroutine.
func (c *Client) send(ctx context.Context, st *stream, interval time.Duration) error {
	// First resend everything un-ACKed from earlier streams, oldest first.
	c.mu.Lock()
	resend := make([]*pending, 0, len(c.pending))
	for _, p := range c.pending {
		resend = append(resend, p)
	}
	c.mu.Unlock()
	slices.SortFunc(resend, func(a, b *pending) int { return int(a.seq - b.seq) })
	for _, p := range resend {
		if err := c.sendOne(ctx, st, p.seq); err != nil {
			return err
		}
	}

	ping := time.NewTicker(interval)
	defer ping.Stop()
	var pingSeq uint64
	for {
		if st.draining.Load() {
			if st.inflight.Load() == 0 {
				return ErrDrained
			}
			// Stop sending; wait for the outstanding ACKs.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-st.wake:
			case <-ping.C:
				if err := c.checkAlive(st); err != nil {
					return err
				}
			}
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case seq := <-c.queue:
			if err := c.sendOne(ctx, st, seq); err != nil {
				return err
			}
		case <-ping.C:
			if err := c.checkAlive(st); err != nil {
				return err
			}
			pingSeq++
			if err := st.s.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Ping{Ping: &v1.Ping{Seq: pingSeq, SentUnixNano: time.Now().UnixNano()}}}); err != nil {
				return fmt.Errorf("grpcout: send ping: %w", err)
			}
		}
	}
}

func (c *Client) checkAlive(st *stream) error {
	if time.Since(time.Unix(0, st.lastRecv.Load())) > c.cfg.Heartbeat.Timeout {
		return ErrHeartbeatTimeout
	}
	return nil
}

// sendOne sends pending seq on st unless it is gone (ACKed) or was already
// sent on this stream, waiting for credit first.
func (c *Client) sendOne(ctx context.Context, st *stream, seq uint64) error {
	for st.inflight.Load() >= st.credits.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-st.wake:
		}
		if st.draining.Load() {
			// The seq stays pending and is resent on the next stream.
			return nil
		}
	}
	c.mu.Lock()
	p := c.pending[seq]
	if p == nil || p.sentGen == st.gen {
		c.mu.Unlock()
		return nil
	}
	p.sentGen = st.gen
	env := p.env
	c.mu.Unlock()
	st.inflight.Add(1)
	if err := st.s.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: seq, Envelope: env}}}); err != nil {
		return fmt.Errorf("grpcout: send deliver: %w", err)
	}
	return nil
}

// receive is the stream's only receiving goroutine.
func (c *Client) receive(st *stream) error {
	for {
		f, err := st.s.Recv()
		if err != nil {
			return fmt.Errorf("grpcout: recv: %w", err)
		}
		st.lastRecv.Store(time.Now().UnixNano())
		switch fr := f.Frame.(type) {
		case *v1.ServerFrame_Ack:
			c.ack(st, fr.Ack)
		case *v1.ServerFrame_Credit:
			st.credits.Store(int64(fr.Credit.GetCredits()))
			st.signal()
		case *v1.ServerFrame_Pong:
			rtt := time.Since(time.Unix(0, fr.Pong.GetPingSentUnixNano()))
			c.hook(Event{Kind: Pong, Target: c.cfg.Target, RTT: rtt})
		case *v1.ServerFrame_Drain:
			c.log.Info("grpcout: backend draining", "target", c.cfg.Target, "reason", fr.Drain.GetReason())
			st.draining.Store(true)
			st.signal()
		}
	}
}

func (c *Client) ack(st *stream, a *v1.Ack) {
	c.mu.Lock()
	p := c.pending[a.GetSeq()]
	if p == nil || p.sentGen != st.gen {
		c.mu.Unlock()
		return // duplicate or stale ACK
	}
	delete(c.pending, a.GetSeq())
	c.mu.Unlock()
	st.inflight.Add(-1)
	<-c.slots
	st.signal()
	p.done(a)
}
