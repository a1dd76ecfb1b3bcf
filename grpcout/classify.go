package grpcout

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

// Reason says why a stream ended or could not be opened. It is the label of
// the reconnect metric and decides how the Pool waits before the next try.
type Reason string

// Reasons. Transient ones (network, unavailable, timeouts) back off
// exponentially; tls and auth are configuration problems: they are logged
// once, wait the maximum backoff between attempts and make the bridge
// unready; drain and goaway reconnect at once.
const (
	ReasonNetwork     Reason = "network"           // an open stream broke: reset, EOF, transport closed
	ReasonUnavailable Reason = "unavailable"       // could not connect: refused, unreachable, DNS
	ReasonTLS         Reason = "tls"               // TLS handshake failed: certificate, name, protocol
	ReasonAuth        Reason = "auth"              // the backend refused our credentials
	ReasonNotServing  Reason = "not_serving"       // grpc.health.v1 says NOT_SERVING
	ReasonOpenTimeout Reason = "open_timeout"      // no Welcome within OpenTimeout
	ReasonHeartbeat   Reason = "heartbeat_timeout" // no frame within Heartbeat.Timeout
	ReasonAckTimeout  Reason = "ack_timeout"       // a delivery not ACKed within AckTimeout
	ReasonDrain       Reason = "drain"             // the backend asked us to move on
	ReasonGoAway      Reason = "goaway"            // the connection is going away (GOAWAY, MaxConnectionAge)
	ReasonProtocol    Reason = "protocol"          // the backend broke the Delivery protocol
	ReasonRemoved     Reason = "removed"           // the address no longer resolves from the targets
)

// credentialProblem reports whether r needs an operator, not a retry.
func (r Reason) credentialProblem() bool { return r == ReasonTLS || r == ReasonAuth }

// immediate reports whether the next stream may open at once.
func (r Reason) immediate() bool { return r == ReasonDrain || r == ReasonGoAway }

// endError ends a stream for a reason the Pool decided itself.
type endError struct {
	reason Reason
	err    error
}

func (e *endError) Error() string { return "grpcout: " + string(e.reason) + ": " + e.err.Error() }
func (e *endError) Unwrap() error { return e.err }

func end(r Reason, err error) error { return &endError{reason: r, err: err} }

// classify maps the error that ended a stream attempt to a Reason. wasUp
// tells a broken stream (network) from one that never opened (unavailable);
// tlsErr is a handshake failure seen during the attempt, if any.
func classify(err error, wasUp bool, tlsErr error) Reason {
	var e *endError
	if errors.As(err, &e) {
		return e.reason
	}
	if tlsErr != nil {
		return ReasonTLS
	}
	s, _ := status.FromError(err)
	switch s.Code() {
	case codes.Unauthenticated, codes.PermissionDenied:
		return ReasonAuth
	case codes.Unimplemented:
		return ReasonProtocol
	case codes.Unavailable:
		if strings.Contains(s.Message(), "authentication handshake failed") {
			return ReasonTLS
		}
	}
	if wasUp {
		return ReasonNetwork
	}
	return ReasonUnavailable
}

// handshakes wraps transport credentials to remember the last TLS handshake
// failure: grpc-go reports it only as text inside an Unavailable status.
type handshakes struct {
	credentials.TransportCredentials
	mu     sync.Mutex
	err    error
	failed time.Time
}

func (h *handshakes) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := h.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil && ctx.Err() == nil {
		h.record(err)
	}
	if err != nil {
		return c, info, err
	}
	return alertConn{Conn: c, h: h}, info, nil
}

func (h *handshakes) record(err error) {
	h.mu.Lock()
	h.err, h.failed = err, time.Now()
	h.mu.Unlock()
}

// alertConn records a TLS alert the backend sends after the handshake: in
// TLS 1.3 a server that refuses our client certificate says so only then,
// on the first read.
type alertConn struct {
	net.Conn
	h *handshakes
}

func (c alertConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && strings.Contains(err.Error(), "remote error: tls:") {
		c.h.record(err)
	}
	return n, err
}

func (h *handshakes) Clone() credentials.TransportCredentials {
	return &handshakes{TransportCredentials: h.TransportCredentials.Clone()}
}

// since returns the handshake failure recorded at or after t, if any.
func (h *handshakes) since(t time.Time) error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil && !h.failed.Before(t) {
		return h.err
	}
	return nil
}

// Bearer sends the token token returns with every call, as the contract's
// bearer credential, over TLS only.
type Bearer func() (string, error)

func (b Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	token, err := b()
	if err != nil {
		return nil, fmt.Errorf("grpcout: bearer token: %w", err)
	}
	return map[string]string{v1.AuthorizationKey: v1.BearerPrefix + token}, nil
}

func (Bearer) RequireTransportSecurity() bool { return true }
