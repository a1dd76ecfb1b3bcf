package grpcout

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/edgebridge/edgebridge/ackwindow"
	"github.com/edgebridge/edgebridge/internal/defaults"
)

// Config configures a Pool. Zero values mean the default.
type Config struct {
	// Targets are backend addresses, host:port. A host name resolving to
	// several addresses gets a stream to each. Required.
	Targets []string
	// BridgeID is sent in Hello. Default: "edgebridge".
	BridgeID string
	// Window is the most un-ACKed deliveries on one stream; a backend's
	// credit grant can lower it, never raise it. Default: 128.
	Window int
	// OpenTimeout bounds opening a stream up to the backend's Welcome, and
	// each health check. Default: 10s.
	OpenTimeout time.Duration
	// AckTimeout is the per-delivery ACK deadline: a stream with a delivery
	// un-ACKed this long is replaced and the delivery resent (same message
	// id) on the next stream. Default: 30s.
	AckTimeout time.Duration
	// ResolveInterval is how often host names in Targets are resolved
	// again. Default: 30s.
	ResolveInterval time.Duration
	// HealthCheckAfter: after this many consecutive failed streams, ask the
	// backend's grpc.health.v1 service before opening another. Default: 2.
	HealthCheckAfter int
	// Backoff between stream attempts to one backend.
	Backoff Backoff
	// Heartbeat is the application-level ping/pong on each stream.
	Heartbeat Heartbeat
	// Keepalive is HTTP/2 keepalive on each connection.
	Keepalive Keepalive
	// TLS enables TLS to the backends (nil: plaintext). An empty ServerName
	// is set to each target's host.
	TLS *tls.Config
	// Token, if set, is sent as "authorization: Bearer <token>" on every
	// call. It requires TLS.
	Token string
	// TokenSource, if set, is asked for the token at every call instead
	// (a token file re-read, so a rotated token needs no restart).
	TokenSource func() (string, error)
}

// Backoff is exponential backoff with jitter.
type Backoff struct {
	Initial time.Duration // Default: 1s.
	Max     time.Duration // Default: 30s.
	Jitter  float64       // fraction, ± around the delay. Default: 0.2.
	// ResetAfter: a stream that stayed up this long resets the delay and the
	// failure count. Default: 30s.
	ResetAfter time.Duration
}

// Heartbeat configures ping/pong on a stream. The ping interval adapts
// between MinInterval and MaxInterval: it doubles after 3 pongs in a row
// slower than SlowRTT or reporting the backend over 90% loaded, and
// shrinks by a third after 5 fast pongs from an unloaded backend.
type Heartbeat struct {
	Interval    time.Duration // first interval. Default: 5s (a backend's Welcome may set it).
	MinInterval time.Duration // Default: 1s.
	MaxInterval time.Duration // Default: 10s; must be below Timeout.
	// Timeout: a stream with no frame from the backend this long is dead.
	// Default: 15s.
	Timeout time.Duration
	// SlowRTT: a pong slower than this counts as a slow link. Default: 500ms.
	SlowRTT time.Duration
}

// Keepalive are the HTTP/2 keepalive parameters. Backends must allow pings
// this often (see backend.ServerEnforcement).
type Keepalive struct {
	Time    time.Duration // ping after this much silence. Default: 20s (minimum 10s).
	Timeout time.Duration // close if the ping is not answered. Default: 10s.
}

// Defaults of Config: package config gives the product's settings the
// same values by these names.
const (
	DefaultWindow            = ackwindow.DefaultSize
	DefaultOpenTimeout       = 10 * time.Second
	DefaultAckTimeout        = 30 * time.Second
	DefaultResolveInterval   = 30 * time.Second
	DefaultBackoffInitial    = time.Second
	DefaultBackoffMax        = 30 * time.Second
	DefaultBackoffJitter     = 0.2
	DefaultBackoffResetAfter = 30 * time.Second
	DefaultHealthCheckAfter  = 2
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultHeartbeatSlowRTT  = 500 * time.Millisecond
	DefaultKeepaliveTime     = 20 * time.Second
	DefaultKeepaliveTimeout  = 10 * time.Second
)

// HeartbeatDefaults fills the zero durations of a heartbeat whose
// interval is set: min_interval 1s (or the interval, if shorter), timeout
// 3 x interval, max_interval 2 x interval but at most 2/3 of the timeout.
func HeartbeatDefaults(interval, minInterval, maxInterval, timeout time.Duration) (minI, maxI, t time.Duration) {
	if minInterval == 0 {
		minInterval = min(time.Second, interval)
	}
	if timeout == 0 {
		timeout = 3 * interval
	}
	if maxInterval == 0 {
		maxInterval = max(interval, min(2*interval, timeout*2/3))
	}
	return minInterval, maxInterval, timeout
}

func (c Config) withDefaults() Config {
	defaults.Zero(&c.BridgeID, "edgebridge")
	defaults.Positive(&c.Window, DefaultWindow)
	defaults.Positive(&c.HealthCheckAfter, DefaultHealthCheckAfter)
	defaults.Positive(&c.OpenTimeout, DefaultOpenTimeout)
	defaults.Positive(&c.AckTimeout, DefaultAckTimeout)
	defaults.Positive(&c.ResolveInterval, DefaultResolveInterval)
	defaults.Positive(&c.Backoff.Initial, DefaultBackoffInitial)
	defaults.Positive(&c.Backoff.Max, DefaultBackoffMax)
	defaults.Positive(&c.Backoff.Jitter, DefaultBackoffJitter)
	defaults.Positive(&c.Backoff.ResetAfter, DefaultBackoffResetAfter)
	h := &c.Heartbeat
	defaults.Positive(&h.Interval, DefaultHeartbeatInterval)
	h.MinInterval, h.MaxInterval, h.Timeout = HeartbeatDefaults(h.Interval, max(h.MinInterval, 0), max(h.MaxInterval, 0), max(h.Timeout, 0))
	defaults.Positive(&h.SlowRTT, DefaultHeartbeatSlowRTT)
	defaults.Positive(&c.Keepalive.Time, DefaultKeepaliveTime)
	defaults.Positive(&c.Keepalive.Timeout, DefaultKeepaliveTimeout)
	return c
}

// HeartbeatProblem is a heartbeat whose bounds are out of order; Field is
// the setting at fault: "" (the intervals) or "timeout".
type HeartbeatProblem struct{ Field, Msg string }

func (p *HeartbeatProblem) Error() string { return p.Msg }

// Check reports the first bound out of order, or nil: a heartbeat needs
// 0 < min_interval <= interval <= max_interval < timeout. Package config
// checks backend.heartbeat with it too.
func (h Heartbeat) Check() *HeartbeatProblem {
	if h.MinInterval <= 0 || h.MinInterval > h.Interval || h.Interval > h.MaxInterval {
		return &HeartbeatProblem{Msg: fmt.Sprintf("intervals must satisfy 0 < min_interval %s <= interval %s <= max_interval %s", h.MinInterval, h.Interval, h.MaxInterval)}
	}
	if h.Timeout <= h.MaxInterval {
		return &HeartbeatProblem{Field: "timeout", Msg: fmt.Sprintf("%s must exceed max_interval %s", h.Timeout, h.MaxInterval)}
	}
	return nil
}

// Validate returns every problem in c (after defaults), joined.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("grpcout: "+format, args...)) }
	if len(c.Targets) == 0 {
		bad("at least one target is required")
	}
	for _, t := range c.Targets {
		if _, _, err := net.SplitHostPort(t); err != nil {
			bad("target %q is not host:port", t)
		}
	}
	if c.Backoff.Max < c.Backoff.Initial {
		bad("backoff max %s is below initial %s", c.Backoff.Max, c.Backoff.Initial)
	}
	if c.Backoff.Jitter >= 1 {
		bad("backoff jitter %.2f must be below 1", c.Backoff.Jitter)
	}
	if p := c.Heartbeat.Check(); p != nil {
		bad("%s: %s", strings.TrimSpace("heartbeat "+p.Field), p.Msg)
	}
	if err := CheckToken(c.Token != "" || c.TokenSource != nil, c.TLS != nil); err != nil {
		bad("%v", err)
	}
	return errors.Join(errs...)
}

// ErrTokenWithoutTLS: a bearer token would cross the network in clear text.
var ErrTokenWithoutTLS = errors.New("a token requires TLS")

// CheckToken is the rule for a bearer token: only over TLS.
func CheckToken(token, tls bool) error {
	if token && !tls {
		return ErrTokenWithoutTLS
	}
	return nil
}
