// Package daprcomp serves edgebridge as a Dapr pluggable component on a
// Unix socket, so Dapr apps on the node use the same stream as the gRPC
// backends:
//
//   - pubsub.<name>: a Kafka-backed pubsub. Subscribing to the request topic
//     delivers every device request as a CloudEvent; each subscription goes
//     through an ackwindow.Window and commits only the contiguous ACKed
//     floor, like the gRPC hop. An ACK with an error is redelivered with
//     backoff, then dead-lettered. Each Dapr consumerID is its own consumer
//     group. Publishing writes to Kafka, except to the reply topic: that
//     body is a device reply and goes to the device over MQTT.
//   - bindings.<name>: an output binding; operation "create" publishes the
//     data to the MQTT topic in metadata "topic" (QoS 1).
//
// daprd discovers the component by the socket file in its socket folder,
// lists its services with gRPC reflection and calls the
// dapr.proto.components.v1 services. Dapr can load several instances of
// the component over one socket (apps, pubsub and binding): each opens its
// own connection, so settings from Init are kept per connection.
package daprcomp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	components "github.com/dapr/dapr/pkg/proto/components/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/stats"

	"github.com/edgebridge/edgebridge/ackwindow"
	"github.com/edgebridge/edgebridge/internal/defaults"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/settle"
)

// Config configures a Server. Zero values mean the default.
type Config struct {
	// SocketPath of the Unix socket; its file name without ".sock" is the
	// component name daprd registers. Required.
	SocketPath string
	// Brokers are the Kafka bootstrap addresses. Required.
	Brokers []string
	// Security: TLS and SASL to the brokers.
	Security kafkapipe.Security
	// Partitions of topics the component creates. Default: 8.
	Partitions int
	// RequestTopic holds the bridge's device requests (protobuf envelopes);
	// subscribers get them as CloudEvents. Dapr apps cannot publish to it. Required.
	RequestTopic string
	// DLQTopic receives what subscribers failed MaxAttempts times. Required.
	DLQTopic string
	// ReplyTopic: a publish here is a device reply, sent over MQTT. Required.
	ReplyTopic string
	// DeviceReplyTopic is the MQTT topic pattern with {device_id}. Required.
	DeviceReplyTopic string
	// BackendGroup is the consumer group of the bridge's gRPC backends; a
	// Dapr consumerID may not join it (it would take their partitions).
	BackendGroup string
	// Source is the CloudEvent source of device requests. Default: edgebridge.
	Source string
	// Window is the most un-ACKed messages per subscription. Default: 128.
	Window int
	// MaxAttempts before a message an app keeps failing is dead-lettered. Default: 5.
	MaxAttempts int
	// RetryBackoff is the first redelivery delay; it doubles. Default: 1s.
	RetryBackoff time.Duration
	// CommitInterval of subscription consumers. Default: 200ms.
	CommitInterval time.Duration
	// DrainTimeout bounds waiting for ACKs when the server stops. Default: 30s.
	DrainTimeout time.Duration
	// SessionTimeout of subscription consumer group members. Default: 6s (kafkapipe.DefaultSessionTimeout).
	SessionTimeout time.Duration
	// HeartbeatInterval of those members. Default: a fifth of SessionTimeout.
	HeartbeatInterval time.Duration
	// MaxMessageBytes is Kafka's message.max.bytes: a dead letter keeps
	// only as much of its record as fits. Default: 1 MiB.
	MaxMessageBytes int
	// BindingTopics are the MQTT topic filters the output binding may
	// publish to; anything else (a device's request topic above all) is
	// refused. Default: device/+/command and DeviceReplyTopic.
	BindingTopics []string
}

func (c Config) withDefaults() Config {
	if len(c.BindingTopics) == 0 {
		c.BindingTopics = DefaultBindingTopics(c.DeviceReplyTopic)
	}
	defaults.Positive(&c.Partitions, kafkapipe.DefaultPartitions)
	defaults.Zero(&c.Source, "edgebridge")
	defaults.Positive(&c.Window, ackwindow.DefaultSize)
	defaults.Positive(&c.MaxAttempts, settle.DefaultMaxAttempts)
	defaults.Positive(&c.RetryBackoff, settle.DefaultBackoff)
	defaults.Positive(&c.CommitInterval, kafkapipe.DefaultCommitInterval)
	defaults.Positive(&c.DrainTimeout, kafkapipe.DefaultDrainTimeout)
	defaults.Positive(&c.SessionTimeout, kafkapipe.DefaultSessionTimeout)
	if c.MaxMessageBytes <= kafkapipe.DeadLetterOverhead {
		c.MaxMessageBytes = kafkapipe.DefaultMaxMessageBytes
	}
	return c
}

// MQTT publishes to devices with QoS 1 and returns after the broker's PUBACK.
type MQTT interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// Kafka writes records and returns after Kafka acknowledged all of them
// (kafkapipe.Producer).
type Kafka interface {
	Write(ctx context.Context, recs ...kafkapipe.Record) error
	// EnsureTopics creates the topics that do not exist and returns once
	// Write can write to them (bounded).
	EnsureTopics(ctx context.Context, partitions int, topics ...string) error
}

// DefaultBindingTopics: device commands and the devices' reply topics.
func DefaultBindingTopics(deviceReplyTopic string) []string {
	out := []string{"device/+/command"}
	if deviceReplyTopic != "" {
		out = append(out, strings.ReplaceAll(deviceReplyTopic, "{device_id}", "+"))
	}
	return out
}

// Deps are the pipeline parts the component uses.
type Deps struct {
	MQTT  MQTT
	Kafka Kafka
	// Healthy returns nil while the pipeline can serve; Ping reports its error.
	Healthy func() error
}

// Server is the component server. Create it with New, run it with Run.
type Server struct {
	components.UnimplementedPubSubServer
	cfg     Config
	deps    Deps
	log     *slog.Logger
	onEvent func(Event)

	topics   sync.Map        // Kafka topics known to exist
	stopping context.Context // done when Run's ctx ends: subscriptions drain
	stop     context.CancelFunc
	serving  atomic.Bool
	streams  sync.WaitGroup // receive goroutines that outlive their handler
}

// Option configures optional hooks.
type Option func(*Server)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// New returns a Server; it does no I/O.
func New(cfg Config, deps Deps, opts ...Option) (*Server, error) {
	var errs []error
	if cfg.SocketPath == "" {
		errs = append(errs, errors.New("daprcomp: no socket path"))
	}
	if len(cfg.Brokers) == 0 {
		errs = append(errs, errors.New("daprcomp: no brokers"))
	}
	if cfg.RequestTopic == "" || cfg.DLQTopic == "" || cfg.ReplyTopic == "" || cfg.DeviceReplyTopic == "" {
		errs = append(errs, errors.New("daprcomp: request, dlq, reply and device reply topics are required"))
	}
	if deps.MQTT == nil || deps.Kafka == nil || deps.Healthy == nil {
		errs = append(errs, errors.New("daprcomp: MQTT, Kafka and Healthy are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg.withDefaults(), deps: deps, log: slog.Default()}
	s.stopping, s.stop = context.WithCancel(context.Background())
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Serving reports whether the socket is up and accepting calls.
func (s *Server) Serving() bool { return s.serving.Load() }

// Run listens on the socket (replacing a stale one) and serves until ctx
// ends. Then it stops taking subscriptions, lets each subscription's app
// finish its window (bounded by DrainTimeout), commits, ends the streams,
// removes the socket file and returns. Run blocks until every goroutine it
// started has returned. It may be called once.
func (s *Server) Run(ctx context.Context) error {
	sock, err := listen(s.cfg.SocketPath)
	if err != nil {
		return err
	}
	defer sock.remove()

	srv := grpc.NewServer(grpc.StatsHandler(connTagger{}))
	hs := health.NewServer()
	components.RegisterPubSubServer(srv, s)
	components.RegisterOutputBindingServer(srv, &binding{srv: s})
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	for name := range srv.GetServiceInfo() {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(sock.l) }()
	s.serving.Store(true)
	s.log.Info("daprcomp: serving", "socket", s.cfg.SocketPath)

	select {
	case err = <-served: // the listener failed
		s.serving.Store(false)
		s.stop()
		srv.Stop()
		s.streams.Wait()
		return fmt.Errorf("daprcomp: serve %s: %w", s.cfg.SocketPath, err)
	case <-ctx.Done():
	}
	s.serving.Store(false)
	hs.Shutdown() // everything NOT_SERVING
	s.stop()
	// Subscriptions drain within DrainTimeout; GracefulStop then waits for
	// their handlers. Unary calls in progress finish too.
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(s.cfg.DrainTimeout + 5*time.Second)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		srv.Stop()
		<-stopped
	}
	<-served
	s.streams.Wait()
	s.log.Info("daprcomp: stopped", "socket", s.cfg.SocketPath)
	return nil
}

// Ping answers daprd's liveness checks: an error while the pipeline (MQTT,
// Kafka) is unhealthy.
func (s *Server) ping() error {
	if err := s.deps.Healthy(); err != nil {
		return unavailable("edgebridge is not healthy: %v", err)
	}
	return nil
}

// connKey keys the per-connection state in a call's context.
type connKey struct{}

// conn is what one daprd connection (one component instance) set in Init.
type conn struct {
	mu     sync.Mutex
	pubsub *settings // nil until PubSub.Init
}

// connTagger gives every connection its own conn: stream and call
// contexts derive from the connection's tagged context.
type connTagger struct{}

func (connTagger) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connKey{}, &conn{})
}
func (connTagger) HandleConn(context.Context, stats.ConnStats)                     {}
func (connTagger) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (connTagger) HandleRPC(context.Context, stats.RPCStats)                       {}

func connOf(ctx context.Context) *conn {
	c, _ := ctx.Value(connKey{}).(*conn)
	if c == nil {
		c = &conn{} // not served through Run (cannot happen); settings are not kept
	}
	return c
}
