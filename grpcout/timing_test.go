package grpcout_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/test/bufconn"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/grpcout"
	kitrig "github.com/edgebridge/edgebridge/kit/rig"
)

// These tests run the real Pool against a real gRPC server over an
// in-memory connection inside a synctest bubble: time is virtual, so
// backoff, heartbeat and deadline timing is checked exactly and instantly.

const target = "backend.test:7070"

// vnet is an in-memory network with one listener that can be swapped.
type vnet struct {
	mu sync.Mutex
	ln *bufconn.Listener // nil: connection refused
}

func (n *vnet) dial(ctx context.Context, _ string) (net.Conn, error) {
	n.mu.Lock()
	ln := n.ln
	n.mu.Unlock()
	if ln == nil {
		return nil, errors.New("connection refused")
	}
	return ln.DialContext(ctx)
}

// serve starts gs on a fresh listener; the returned stop ends it.
func (n *vnet) serve(gs *grpc.Server) (stop func()) {
	ln := bufconn.Listen(1 << 20)
	n.mu.Lock()
	n.ln = ln
	n.mu.Unlock()
	done := make(chan struct{})
	go func() { _ = gs.Serve(ln); close(done) }()
	return func() {
		n.mu.Lock()
		n.ln = nil
		n.mu.Unlock()
		gs.Stop()
		<-done
	}
}

// events records Pool events with their (virtual) time.
type events = kitrig.PoolEvents

// startPool runs a Pool to target over n until the bubble's test ends.
func startPool(t *testing.T, n *vnet, cfg grpcout.Config, ev *events, opts ...grpcout.Option) *grpcout.Pool {
	t.Helper()
	cfg.Targets = []string{target}
	p, err := grpcout.New(cfg, append([]grpcout.Option{
		grpcout.WithDialer(n.dial),
		grpcout.WithResolver(func(context.Context, string) ([]string, error) { return []string{target}, nil }),
		grpcout.WithEventHook(ev.Hook),
		grpcout.WithLogger(slog.New(slog.DiscardHandler)),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

func within(t *testing.T, what string, got, lo, hi time.Duration) {
	t.Helper()
	if got < lo || got > hi {
		t.Errorf("%s: got %s, want within [%s, %s]", what, got, lo, hi)
	}
}

// The reconnect delay doubles from 1s to the 30s cap with ±20% jitter, and
// a stream that stayed up ResetAfter resets it to 1s.
func TestBackoffVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := &vnet{}
		ev := &events{}
		startPool(t, n, grpcout.Config{}, ev)
		time.Sleep(2 * time.Minute)
		downs := ev.Of(grpcout.StreamDown)
		want := []time.Duration{1, 2, 4, 8, 16, 30, 30}
		if len(downs) < len(want)+1 {
			t.Fatalf("got %d failed attempts in 2 minutes, want at least %d", len(downs), len(want)+1)
		}
		for i, w := range want {
			gap := downs[i+1].At.Sub(downs[i].At)
			within(t, "gap after failure", gap, w*time.Second*8/10, w*time.Second*12/10)
			if r := downs[i].Reason; r != grpcout.ReasonUnavailable {
				t.Errorf("failure %d: got reason %q, want %q", i, r, grpcout.ReasonUnavailable)
			}
		}

		// A backend comes; its stream stays up past ResetAfter, then dies.
		srv := backend.NewServer(backend.Config{}, okHandler(nil), nil)
		gs := grpc.NewServer()
		srv.Register(gs)
		stop := n.serve(gs)
		defer stop()
		time.Sleep(40 * time.Second) // > the 30s cap +20% jitter: the stream is up
		if ups := ev.Of(grpcout.StreamUp); len(ups) != 1 {
			t.Fatalf("got %d streams up, want 1", len(ups))
		}
		time.Sleep(30 * time.Second)
		before := len(ev.Of(grpcout.StreamDown))
		n.mu.Lock()
		n.ln = nil // refuse new connections; the next line breaks the open one
		n.mu.Unlock()
		gs.Stop()
		time.Sleep(5 * time.Second)
		downs = ev.Of(grpcout.StreamDown)[before:]
		if len(downs) < 3 {
			t.Fatalf("got %d failures after the backend went away, want >= 3", len(downs))
		}
		// broke (network), then refused after ~1s (reset delay), then ~2s.
		if downs[0].Reason != grpcout.ReasonNetwork {
			t.Errorf("got %q when the open stream broke, want %q", downs[0].Reason, grpcout.ReasonNetwork)
		}
		within(t, "first delay after a long healthy stream", downs[1].At.Sub(downs[0].At), 800*time.Millisecond, 1200*time.Millisecond)
		within(t, "second delay", downs[2].At.Sub(downs[1].At), 1600*time.Millisecond, 2400*time.Millisecond)
	})
}

func okHandler(calls *atomic.Int64) backend.Handler {
	return func(context.Context, *v1.Envelope) backend.Result {
		if calls != nil {
			calls.Add(1)
		}
		return backend.Result{Outcome: v1.Outcome_OUTCOME_OK}
	}
}

// A backend that welcomes and then goes silent (a frozen process, a
// half-open connection) is declared dead after Heartbeat.Timeout, within
// one check period (Timeout/10, at most 1s).
func TestHeartbeatTimeoutVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := &vnet{}
		gs := grpc.NewServer()
		v1.RegisterDeliveryServer(gs, &rawServer{stream: func(s v1.Delivery_StreamServer) error {
			if err := welcome(s, 0); err != nil {
				return err
			}
			<-s.Context().Done()
			return nil
		}})
		defer n.serve(gs)()
		ev := &events{}
		startPool(t, n, grpcout.Config{Heartbeat: grpcout.Heartbeat{Interval: 5 * time.Second, Timeout: 15 * time.Second}}, ev)
		time.Sleep(20 * time.Second)
		ups, downs := ev.Of(grpcout.StreamUp), ev.Of(grpcout.StreamDown)
		if len(ups) == 0 || len(downs) == 0 {
			t.Fatalf("got %d ups and %d downs, want a stream replaced", len(ups), len(downs))
		}
		if downs[0].Reason != grpcout.ReasonHeartbeat {
			t.Fatalf("got reason %q, want %q", downs[0].Reason, grpcout.ReasonHeartbeat)
		}
		within(t, "detection time", downs[0].At.Sub(ups[0].At), 15*time.Second, 16*time.Second)
	})
}

// Slow pongs stretch the ping interval up to MaxInterval; fast ones shrink
// it down to MinInterval.
func TestAdaptiveHeartbeatVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var delay atomic.Int64 // how long the backend holds each pong
		delay.Store(int64(2 * time.Second))
		n := &vnet{}
		gs := grpc.NewServer()
		v1.RegisterDeliveryServer(gs, &rawServer{stream: func(s v1.Delivery_StreamServer) error {
			if err := welcome(s, 0); err != nil {
				return err
			}
			for {
				f, err := s.Recv()
				if err != nil {
					return nil
				}
				if p := f.GetPing(); p != nil {
					time.Sleep(time.Duration(delay.Load()))
					if err := s.Send(&v1.ServerFrame{Frame: &v1.ServerFrame_Pong{Pong: &v1.Pong{Seq: p.Seq, PingSentUnixNano: p.SentUnixNano}}}); err != nil {
						return nil
					}
				}
			}
		}})
		defer n.serve(gs)()
		ev := &events{}
		hb := grpcout.Heartbeat{Interval: 4 * time.Second, MinInterval: time.Second, MaxInterval: 16 * time.Second, Timeout: 30 * time.Second}
		startPool(t, n, grpcout.Config{Heartbeat: hb}, ev)
		time.Sleep(3 * time.Minute)
		pongs := ev.Of(grpcout.Pong)
		if len(pongs) == 0 || pongs[len(pongs)-1].Interval != hb.MaxInterval {
			t.Fatalf("after slow pongs the interval is %v, want %s", last(pongs), hb.MaxInterval)
		}
		if pongs[0].RTT != 2*time.Second {
			t.Errorf("got RTT %s, want 2s", pongs[0].RTT)
		}
		delay.Store(0)
		time.Sleep(6 * time.Minute) // 5 fast pongs per step: 16s, 10.7s, 7.1s, ... 1s
		pongs = ev.Of(grpcout.Pong)
		if got := pongs[len(pongs)-1].Interval; got != hb.MinInterval {
			t.Fatalf("after fast pongs the interval is %s, want %s", got, hb.MinInterval)
		}
		if downs := ev.Of(grpcout.StreamDown); len(downs) != 0 {
			t.Fatalf("the stream went down: %v", downs[0].Err)
		}
	})
}

func last(es []kitrig.PoolEvent) any {
	if len(es) == 0 {
		return "no pong"
	}
	return es[len(es)-1].Interval
}

// A delivery not ACKed within AckTimeout replaces the stream and is resent
// with the same message id; the backend's dedup makes it one processing.
func TestAckDeadlineVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var calls atomic.Int64
		srv := backend.NewServer(backend.Config{}, func(context.Context, *v1.Envelope) backend.Result {
			if calls.Add(1) == 1 {
				<-release // the first call hangs past the deadline
			}
			return backend.Result{Outcome: v1.Outcome_OUTCOME_OK}
		}, nil, backend.WithDedupLock(make(chanLock, 1))) // a blocked sync.Mutex would stop virtual time
		n := &vnet{}
		gs := grpc.NewServer()
		srv.Register(gs)
		defer n.serve(gs)()
		ev := &events{}
		p := startPool(t, n, grpcout.Config{AckTimeout: 30 * time.Second, Backoff: grpcout.Backoff{Initial: time.Second}}, ev)
		synctest.Wait()
		sent := time.Now()
		got := make(chan *v1.Ack, 1)
		p.Deliver(0, env(1), func(a *v1.Ack) error { got <- a; return nil })
		time.Sleep(45 * time.Second)
		downs := ev.Of(grpcout.StreamDown)
		if len(downs) == 0 || downs[0].Reason != grpcout.ReasonAckTimeout {
			t.Fatalf("got stream ends %v, want %q", downs, grpcout.ReasonAckTimeout)
		}
		within(t, "ACK deadline", downs[0].At.Sub(sent), 30*time.Second, 31*time.Second)
		close(release)
		a := <-got
		if a.MessageId != env(1).MessageId || (a.Outcome != v1.Outcome_OUTCOME_OK && a.Outcome != v1.Outcome_OUTCOME_DUPLICATE) {
			t.Fatalf("got %v, want the message ACKed", a)
		}
		if calls.Load() != 1 {
			t.Fatalf("handler ran %d times, want once", calls.Load())
		}
	})
}

// A backend whose certificate the bridge does not trust is a TLS failure:
// not retried in a hot loop (every Backoff.Max), logged once, reported in
// Status. A wrong token is an auth failure, the same way.
func TestCredentialFailuresVirtualTime(t *testing.T) {
	cert, pool := selfSigned(t, "backend.test")
	for _, tc := range []struct {
		name   string
		trust  *x509.CertPool
		token  string
		reason grpcout.Reason
	}{
		{name: "untrusted certificate", trust: x509.NewCertPool(), token: "", reason: grpcout.ReasonTLS},
		{name: "wrong token", trust: pool, token: "wrong", reason: grpcout.ReasonAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := &vnet{}
				defer n.serve(tlsBackend(cert, "right", nil))()
				ev := &events{}
				logs := &countingHandler{}
				p := startPool(t, n, grpcout.Config{TLS: &tls.Config{RootCAs: tc.trust}, Token: tc.token}, ev, grpcout.WithLogger(slog.New(logs)))
				time.Sleep(100 * time.Second)
				downs := ev.Of(grpcout.StreamDown)
				if len(downs) < 3 || len(downs) > 5 {
					t.Fatalf("got %d attempts in 100s, want 3 to 5 (one per 30s ±20%%)", len(downs))
				}
				for i, d := range downs {
					if d.Reason != tc.reason {
						t.Fatalf("attempt %d: got reason %q (%v), want %q", i, d.Reason, d.Err, tc.reason)
					}
					if i > 0 {
						within(t, "gap", d.At.Sub(downs[i-1].At), 24*time.Second, 36*time.Second)
					}
				}
				if got := logs.errors.Load(); got != 1 {
					t.Errorf("got %d error logs, want the cause logged once", got)
				}
				st := p.Status()
				if len(st) != 1 || st[0].Up || st[0].Reason != tc.reason || st[0].Err == nil {
					t.Fatalf("got status %+v, want down with reason %q and its cause", st, tc.reason)
				}
			})
		})
	}
}

// chanLock is a lock whose waiters are durably blocked for synctest.
type chanLock chan struct{}

func (l chanLock) Lock()   { l <- struct{}{} }
func (l chanLock) Unlock() { <-l }

type countingHandler struct{ errors atomic.Int64 }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.errors.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// tlsBackend is a backend serving TLS with cert and requiring token.
func tlsBackend(cert tls.Certificate, token string, calls *atomic.Int64) *grpc.Server {
	opts := append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))},
		backend.TokenAuth(token)...)
	gs := grpc.NewServer(opts...)
	backend.NewServer(backend.Config{}, okHandler(calls), nil).Register(gs)
	return gs
}

// A backend that drains and stays up (e.g. a replica being emptied): after
// two streams it ends at once, the bridge asks grpc.health.v1, hears
// NOT_SERVING and opens no more streams while that holds.
func TestHealthCheckBeforeReconnectVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := backend.NewServer(backend.Config{}, okHandler(nil), nil)
		gs := grpc.NewServer()
		srv.Register(gs)
		n := &vnet{}
		defer n.serve(gs)()
		ev := &events{}
		startPool(t, n, grpcout.Config{}, ev)
		time.Sleep(5 * time.Second)
		if len(ev.Of(grpcout.StreamUp)) != 1 {
			t.Fatal("no stream up")
		}
		drained := time.Now()
		srv.Drain("emptying this replica")
		time.Sleep(2 * time.Minute)
		var notServing []kitrig.PoolEvent
		for _, d := range ev.Of(grpcout.StreamDown) {
			if d.Reason == grpcout.ReasonNotServing {
				notServing = append(notServing, d)
			}
		}
		if len(notServing) == 0 {
			t.Fatalf("no %q failure after the drain: %v", grpcout.ReasonNotServing, ev.Of(grpcout.StreamDown))
		}
		ups := ev.Of(grpcout.StreamUp)
		if last := ups[len(ups)-1]; last.At.After(notServing[0].At) {
			t.Fatalf("a stream opened at %s after the health check said NOT_SERVING", last.At.Sub(drained))
		}
	})
}

// selfSigned makes a certificate for name and a pool that trusts it.
func selfSigned(t *testing.T, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		// Virtual time starts in 2000: cover it and today.
		NotBefore: time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// With a trusted certificate and the right token, deliveries flow.
func TestTLSAndTokenVirtualTime(t *testing.T) {
	cert, pool := selfSigned(t, "backend.test")
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		n := &vnet{}
		defer n.serve(tlsBackend(cert, "right", &calls))()
		p := startPool(t, n, grpcout.Config{TLS: &tls.Config{RootCAs: pool}, Token: "right"}, &events{})
		got := make(chan *v1.Ack, 1)
		p.Deliver(0, env(1), func(a *v1.Ack) error { got <- a; return nil })
		if a := <-got; a.Outcome != v1.Outcome_OUTCOME_OK || calls.Load() != 1 {
			t.Fatalf("got %v after %d calls, want OK after 1", a, calls.Load())
		}
	})
}

// HTTP/2 keepalive: the bridge pings an idle connection every
// Keepalive.Time; a backend with backend.ServerEnforcement accepts that for
// hours, one with grpc-go's default policy (5 minutes) kills the
// connection with "too_many_pings". Application pings are made rare here
// so only HTTP/2 keepalive keeps the connection busy.
func TestKeepaliveEnforcementVirtualTime(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     []grpc.ServerOption
		wantDown bool
	}{
		{name: "with ServerEnforcement", opts: []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(backend.ServerEnforcement)}},
		{name: "grpc-go default policy", wantDown: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := backend.NewServer(backend.Config{}, okHandler(nil), nil)
				gs := grpc.NewServer(tc.opts...)
				srv.Register(gs)
				n := &vnet{}
				defer n.serve(gs)()
				ev := &events{}
				startPool(t, n, grpcout.Config{
					Keepalive: grpcout.Keepalive{Time: 10 * time.Second, Timeout: 5 * time.Second},
					Heartbeat: grpcout.Heartbeat{Interval: time.Hour, MaxInterval: time.Hour, Timeout: 3 * time.Hour},
				}, ev)
				time.Sleep(2 * time.Hour)
				downs := ev.Of(grpcout.StreamDown)
				if tc.wantDown && len(downs) == 0 {
					t.Fatal("a server with the default policy kept the connection: the test does not exercise keepalive")
				}
				if !tc.wantDown && len(downs) != 0 {
					t.Fatalf("the stream went down %d times (first: %v), want never", len(downs), downs[0].Err)
				}
			})
		})
	}
}
