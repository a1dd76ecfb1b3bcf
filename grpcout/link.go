package grpcout

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/internal/schedule"
)

// link is the Pool's connection to one backend address: a stream at a
// time, reopened with backoff.
type link struct {
	p      *Pool
	target string
	addr   string
	wake   chan struct{} // the queue, credits or ACKs changed
	hs     *handshakes   // nil without TLS
	stop   context.CancelFunc

	// Guarded by p.mu.
	queue      []*delivery
	st         *stream // the open stream, nil when down
	parts      int
	removed    bool
	lastReason Reason
	lastErr    error
}

func newLink(p *Pool, target, addr string) *link {
	return &link{p: p, target: target, addr: addr, wake: make(chan struct{}, 1)}
}

func (l *link) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// upLocked reports whether the link has an open stream.
func (l *link) upLocked() bool { return l.st != nil }

// usableLocked reports whether partitions may move to the link.
func (l *link) usableLocked() bool { return l.st != nil && !l.removed }

func (l *link) enqueueLocked(d *delivery) {
	l.queue = append(l.queue, d)
	l.signal()
}

// stream is one open Delivery stream.
type stream struct {
	gen      uint64
	s        v1.Delivery_StreamClient
	lastRecv atomic.Int64 // unix nanos of the last frame from the backend
	interval atomic.Int64 // current ping interval, set by the receiver
	rtt      atomic.Int64 // the last ping's round trip, set by the receiver
	load     atomic.Int64 // the backend's last reported load, 0-100
	up       time.Time    // when the Welcome arrived

	// Guarded by p.mu.
	credits     int
	sent        map[uint64]time.Time // seq -> sent, not yet ACKed on this stream
	draining    bool
	drainReason Reason
	drainErr    error
	// A connection that left READY may have received GOAWAY (the stream
	// still works) or died (it does not): a goaway drain ends only after a
	// ping sent once draining began is answered, so a dead connection is
	// reported as the network failure it is.
	drainPing   uint64
	drainPonged bool
}

func (l *link) dialOptions() []grpc.DialOption {
	cfg := l.p.cfg
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		tc := cfg.TLS.Clone()
		if tc.ServerName == "" {
			tc.ServerName, _, _ = net.SplitHostPort(l.target)
		}
		l.hs = &handshakes{TransportCredentials: credentials.NewTLS(tc)}
		creds = l.hs
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: cfg.Keepalive.Time, Timeout: cfg.Keepalive.Timeout, PermitWithoutStream: true,
		}),
	}
	switch {
	case cfg.TokenSource != nil:
		opts = append(opts, grpc.WithPerRPCCredentials(Bearer(cfg.TokenSource)))
	case cfg.Token != "":
		token := cfg.Token
		opts = append(opts, grpc.WithPerRPCCredentials(Bearer(func() (string, error) { return token, nil })))
	}
	if l.p.o.dial != nil {
		opts = append(opts, grpc.WithContextDialer(l.p.o.dial))
	}
	if l.p.o.newStats != nil {
		opts = append(opts, grpc.WithStatsHandler(l.p.o.newStats(l.target, l.addr)))
	}
	return opts
}

// run opens streams until ctx ends: after a failure it waits the backoff
// delay (the maximum for TLS/auth problems, none after a drain), and after
// repeated failures asks grpc.health.v1 before opening the next stream.
func (l *link) run(ctx context.Context) error {
	b := l.p.cfg.Backoff
	delay, failures := b.Initial, 0
	var logged Reason // the credential problem logged, to log it once
	for {
		started := time.Now()
		upFor, err := l.attempt(ctx, failures)
		if ctx.Err() != nil {
			l.p.o.hook(Event{Kind: StreamDown, Target: l.target, Addr: l.addr, Reason: ReasonRemoved, Err: ctx.Err()})
			return nil
		}
		reason := classify(err, upFor > 0, l.hs.since(started))
		l.p.mu.Lock()
		l.lastReason, l.lastErr = reason, err
		l.p.mu.Unlock()
		l.p.o.hook(Event{Kind: StreamDown, Target: l.target, Addr: l.addr, Reason: reason, Err: err})

		if upFor >= b.ResetAfter {
			delay, failures = b.Initial, 0
		}
		var wait time.Duration
		switch {
		case reason.immediate() && upFor >= b.Initial:
			// A backend that asks us to move on is not failing; one that
			// drains every new stream at once gets the normal backoff.
		case reason.credentialProblem():
			// Retrying fast cannot fix a certificate or a token.
			wait, failures = b.Max, failures+1
			if logged != reason {
				logged = reason
				l.p.o.log.Error("grpcout: backend refused the bridge's credentials; fix the configuration",
					"target", l.target, "addr", l.addr, "reason", reason, "err", err, "retry_in", wait)
			}
		default:
			wait, delay, failures = delay, b.next(delay), failures+1
		}
		if !reason.credentialProblem() {
			logged = ""
			l.p.o.log.Warn("grpcout: stream ended", "target", l.target, "addr", l.addr, "reason", reason, "err", err, "retry_in", wait)
		}
		if !schedule.Sleep(ctx, b.jittered(wait)) {
			return nil
		}
	}
}

// attempt opens a fresh connection (so the outcome is this attempt's, not
// grpc-go's own reconnect backoff's), checks health after repeated
// failures, and serves a stream on it until the stream ends.
func (l *link) attempt(ctx context.Context, failures int) (time.Duration, error) {
	// The address is already resolved: passthrough keeps grpc-go from
	// resolving it again, and the TLS server name comes from the target.
	conn, err := grpc.NewClient("passthrough:///"+l.addr, l.dialOptions()...)
	if err != nil {
		return 0, end(ReasonProtocol, fmt.Errorf("grpcout: %s: %w", l.addr, err))
	}
	defer conn.Close()
	if err := l.checkHealth(ctx, conn, failures); err != nil {
		return 0, err
	}
	return l.runStream(ctx, v1.NewDeliveryClient(conn), conn)
}

// checkHealth asks grpc.health.v1 before a stream is opened after repeated
// failures. A backend without the health service counts as healthy.
func (l *link) checkHealth(ctx context.Context, conn *grpc.ClientConn, failures int) error {
	if failures < l.p.cfg.HealthCheckAfter {
		return nil
	}
	hctx, cancel := context.WithTimeout(ctx, l.p.cfg.OpenTimeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{Service: v1.Delivery_ServiceDesc.ServiceName})
	switch status.Code(err) {
	case codes.OK:
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return end(ReasonNotServing, fmt.Errorf("health check: %s", resp.GetStatus()))
		}
		return nil
	case codes.Unimplemented, codes.NotFound:
		return nil
	case codes.DeadlineExceeded:
		return end(ReasonOpenTimeout, fmt.Errorf("health check: %w", err))
	}
	return fmt.Errorf("health check: %w", err)
}

// runStream opens a stream and serves it until it ends; it returns how long
// the stream was up (0 if it never opened) and why it ended.
func (l *link) runStream(ctx context.Context, client v1.DeliveryClient, conn *grpc.ClientConn) (time.Duration, error) {
	cfg := l.p.cfg
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Until the Welcome arrives, the open timeout cancels the stream.
	openTimer := time.AfterFunc(cfg.OpenTimeout, cancel)
	s, err := client.Stream(sctx)
	if err == nil {
		err = s.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Hello{Hello: &v1.Hello{BridgeId: cfg.BridgeID, Window: uint32(cfg.Window)}}})
		if errors.Is(err, io.EOF) {
			err = nil // the server ended the stream; Recv returns its status
		}
	}
	var first *v1.ServerFrame
	if err == nil {
		first, err = s.Recv()
	}
	if !openTimer.Stop() {
		return 0, end(ReasonOpenTimeout, fmt.Errorf("no welcome within %s", cfg.OpenTimeout))
	}
	if err != nil {
		return 0, fmt.Errorf("grpcout: open stream: %w", err)
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return 0, end(ReasonProtocol, errNoWelcome)
	}

	st := &stream{s: s, sent: make(map[uint64]time.Time), credits: cfg.Window}
	if welcome.Credits != nil { // absent: the window; 0: paused
		st.credits = min(int(welcome.GetCredits()), cfg.Window)
	}
	start := cfg.Heartbeat.Interval
	if ms := welcome.GetHeartbeatIntervalMs(); ms > 0 {
		start = time.Duration(ms) * time.Millisecond
	}
	pace := newPacer(cfg.Heartbeat, start)
	st.interval.Store(int64(pace.interval))
	up := time.Now()
	st.up = up
	st.lastRecv.Store(up.UnixNano())

	l.p.mu.Lock()
	l.p.gen++
	st.gen = l.p.gen
	l.st = st
	l.p.streamsChangedLocked(1)
	l.lastReason, l.lastErr = "", nil
	l.p.rebalanceLocked() // take over partitions of backends that are down
	l.p.mu.Unlock()
	l.signal()
	l.p.o.hook(Event{Kind: StreamUp, Target: l.target, Addr: l.addr, Credits: st.credits})
	l.p.o.log.Info("grpcout: stream up", "target", l.target, "addr", l.addr, "backend", welcome.GetBackendId(), "credits", st.credits)

	var wg sync.WaitGroup
	var recvErr error
	wg.Go(func() {
		recvErr = l.receive(st, pace)
		cancel() // a dead stream stops the sender at once
	})
	wg.Go(func() { l.watchConn(sctx, conn, st) })
	sendErr := l.send(sctx, st)
	cancel()
	wg.Wait()

	l.p.mu.Lock()
	l.streamDownLocked(st)
	l.p.mu.Unlock()

	// The receiver saw the cause unless the sender ended the stream itself
	// (then the receiver only saw the cancellation). A connection that
	// broke also leaves READY, so a real receive error beats "goaway".
	err = sendErr
	var e *endError
	if recvErr != nil && status.Code(recvErr) != codes.Canceled && (!errors.As(sendErr, &e) || e.reason == ReasonGoAway) {
		err = recvErr
	}
	return time.Since(up), err
}

// streamDownLocked puts every delivery this link still owns back in its
// queue in order, to be resent on the next stream, or hands the link's
// partitions to other backends that are up.
func (l *link) streamDownLocked(st *stream) {
	l.st = nil
	l.p.streamsChangedLocked(-1)
	var mine []*delivery
	for _, d := range l.p.pending {
		if d.owner == l {
			mine = append(mine, d)
		}
	}
	slices.SortFunc(mine, func(a, b *delivery) int { return cmp.Compare(a.seq, b.seq) })
	clear(l.queue)
	l.queue = append(l.queue[:0], mine...)
	l.p.rebalanceLocked()
}

// send is the stream's only sending goroutine: deliveries within the
// credit grant, pings at the adaptive interval, and the liveness checks.
func (l *link) send(ctx context.Context, st *stream) error {
	cfg := l.p.cfg
	ping := time.NewTimer(time.Duration(st.interval.Load()))
	defer ping.Stop()
	// The checks run often enough that a dead stream is found within a
	// tenth of its timeout after the timeout.
	check := time.NewTicker(max(10*time.Millisecond, min(time.Second, cfg.Heartbeat.Timeout/10, cfg.AckTimeout/10)))
	defer check.Stop()
	var pingSeq uint64
	sendPing := func() error {
		pingSeq++
		if err := st.s.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Ping{Ping: &v1.Ping{Seq: pingSeq, SentUnixNano: time.Now().UnixNano()}}}); err != nil {
			return fmt.Errorf("grpcout: send ping: %w", err)
		}
		return nil
	}
	for {
		d, resends, expired, err := l.next(st)
		for _, e := range expired {
			_ = e.done(nil)
		}
		if err != nil {
			return err
		}
		if l.needDrainPing(st, pingSeq+1) {
			if err := sendPing(); err != nil {
				return err
			}
			continue
		}
		if d != nil {
			f := &v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: d.seq, Envelope: d.env, Resends: resends}}}
			if err := st.s.Send(f); err != nil {
				return fmt.Errorf("grpcout: send deliver: %w", err)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.wake:
		case now := <-check.C:
			if err := l.checkAlive(st, now); err != nil {
				return err
			}
		case <-ping.C:
			if err := sendPing(); err != nil {
				return err
			}
			ping.Reset(time.Duration(st.interval.Load()))
		}
	}
}

// next takes the next delivery to send on st, if the grant allows one. A
// draining stream sends nothing and ends once its ACKs are in. expired are
// the deliveries it found past their deadline on the way, taken out of the
// pool: the caller calls their done(nil).
func (l *link) next(st *stream) (d *delivery, resends uint32, expired []*delivery, err error) {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	if st.draining {
		if len(st.sent) == 0 && (st.drainReason != ReasonGoAway || st.drainPonged) {
			return nil, 0, nil, end(st.drainReason, st.drainErr)
		}
		return nil, 0, nil, nil
	}
	if len(st.sent) >= st.credits {
		return nil, 0, nil, nil
	}
	now := time.Now()
	for len(l.queue) > 0 {
		d := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		if d.finished || d.owner != l || d.sentGen == st.gen {
			continue // ACKed, moved away, or already on this stream
		}
		if l.p.expiredLocked(d, now) {
			expired = append(expired, d)
			continue
		}
		d.sentGen = st.gen
		st.sent[d.seq] = now
		resends := d.sends
		d.sends++
		return d, resends, expired, nil
	}
	return nil, 0, expired, nil
}

// needDrainPing reports whether a goaway drain still needs its ping, and
// if so records that ping seq will be it.
func (l *link) needDrainPing(st *stream, seq uint64) bool {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	if !st.draining || st.drainReason != ReasonGoAway || st.drainPing != 0 {
		return false
	}
	st.drainPing = seq
	return true
}

// checkAlive ends a stream whose backend went silent or left a delivery
// un-ACKed past the deadline.
func (l *link) checkAlive(st *stream, now time.Time) error {
	cfg := l.p.cfg
	if silent := now.Sub(time.Unix(0, st.lastRecv.Load())); silent > cfg.Heartbeat.Timeout {
		return end(ReasonHeartbeat, fmt.Errorf("no frame from the backend for %s", silent.Round(time.Millisecond)))
	}
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	for seq, sent := range st.sent {
		if age := now.Sub(sent); age > cfg.AckTimeout {
			id := ""
			if d := l.p.pending[seq]; d != nil {
				id = d.env.GetMessageId()
			}
			return end(ReasonAckTimeout, fmt.Errorf("delivery %d (message %s) not ACKed for %s", seq, id, age.Round(time.Millisecond)))
		}
	}
	return nil
}

// receive is the stream's only receiving goroutine.
func (l *link) receive(st *stream, pace *pacer) error {
	for {
		f, err := st.s.Recv()
		if err != nil {
			return fmt.Errorf("grpcout: recv: %w", err)
		}
		now := time.Now()
		st.lastRecv.Store(now.UnixNano())
		switch fr := f.Frame.(type) {
		case *v1.ServerFrame_Ack:
			l.p.ack(l, st, fr.Ack)
		case *v1.ServerFrame_Credit:
			n := min(int(fr.Credit.GetCredits()), l.p.cfg.Window)
			l.p.mu.Lock()
			st.credits = n
			l.p.mu.Unlock()
			l.signal()
			l.p.o.hook(Event{Kind: Credit, Target: l.target, Addr: l.addr, Credits: n})
		case *v1.ServerFrame_Pong:
			l.p.mu.Lock()
			if st.drainPing != 0 && fr.Pong.GetSeq() >= st.drainPing {
				st.drainPonged = true
			}
			l.p.mu.Unlock()
			l.signal()
			rtt := now.Sub(time.Unix(0, fr.Pong.GetPingSentUnixNano()))
			interval := pace.observe(rtt, fr.Pong.GetLoadPercent())
			st.interval.Store(int64(interval))
			st.rtt.Store(int64(rtt))
			st.load.Store(int64(fr.Pong.GetLoadPercent()))
			l.p.o.hook(Event{Kind: Pong, Target: l.target, Addr: l.addr, RTT: rtt, Load: fr.Pong.GetLoadPercent(), Interval: interval})
		case *v1.ServerFrame_Drain:
			l.p.o.log.Info("grpcout: backend draining", "target", l.target, "addr", l.addr, "reason", fr.Drain.GetReason())
			l.drain(st, ReasonDrain, fmt.Errorf("backend: %s", fr.Drain.GetReason()))
		}
	}
}

// drain stops sending on st; the sender ends the stream once every ACK is in.
func (l *link) drain(st *stream, r Reason, err error) {
	l.p.mu.Lock()
	if !st.draining {
		st.draining, st.drainReason, st.drainErr = true, r, err
	}
	l.p.mu.Unlock()
	l.signal()
}

// watchConn drains the stream when its connection leaves READY: a GOAWAY
// (MaxConnectionAge, a graceful server stop) does that before the
// connection closes, so the outstanding ACKs can still arrive.
func (l *link) watchConn(ctx context.Context, conn *grpc.ClientConn, st *stream) {
	for s := conn.GetState(); ; s = conn.GetState() {
		if s != connectivity.Ready && s != connectivity.Connecting {
			l.drain(st, ReasonGoAway, fmt.Errorf("connection %s", s))
			return
		}
		if !conn.WaitForStateChange(ctx, s) {
			return
		}
	}
}
