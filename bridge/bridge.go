// Package bridge assembles edgebridge's stages into the pipeline
//
//	mqttin -> transcoder -> kafkapipe.Producer -> Kafka
//	Kafka -> kafkapipe.Consumer -> ackwindow -> grpcout -> backend
//	backend ACK -> reply to the device over MQTT -> window ACK -> commit
//
// and owns the one ACK chain across them: an MQTT message is PUBACKed only
// after Kafka acknowledged its write; a Kafka record is committed only after
// its backend ACK and its reply to the device (or its dead-letter record)
// are done, and only up to the contiguous floor.
package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/edgebridge/edgebridge/ackwindow"
	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/daprcomp"
	"github.com/edgebridge/edgebridge/grpcout"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/settle"
	"github.com/edgebridge/edgebridge/transcoder"
)

// backendMemberFile, in kafka.data_dir, holds the backends' consumer
// group member id of the last run (kafkapipe.ConsumerConfig.MemberFile).
const backendMemberFile = "backend-group-member"

// handedFile, in kafka.data_dir, records which requests the bridge may have
// handed to the backends (kafkapipe.ConsumerConfig.HandedFile): with
// backend.max_request_age, a request an earlier run may have sent is never
// expired.
const handedFile = "backend-handed-offsets"

// Bridge is the running pipeline. Create it with New and run it with Run.
type Bridge struct {
	cfg     config.Config
	log     *slog.Logger
	metrics *Metrics

	mqttUser     string                 // WithMQTTCredentials
	mqttPassword func() (string, error) // WithMQTTCredentials

	rules    ingestRules
	mqtt     *mqttin.Client
	intake   *mqttin.Intake // WithIntake; nil: requests arrive over mqtt only
	producer *kafkapipe.Producer
	win      *ackwindow.Window
	consumer *kafkapipe.Consumer // nil without backend targets
	pool     *grpcout.Pool       // nil without backend targets
	dapr     *daprcomp.Server    // nil unless dapr.enabled

	settler *settle.Settler // the outcome of every delivered record

	kafkaOK  atomic.Bool
	kafkaWhy atomic.Pointer[brokerProblem] // why kafkaOK is false, for /readyz and /status
	// stalled says why the last write of device requests failed and intake
	// waits; nil once a write succeeds (a broker that answers pings but
	// refuses writes, a full disk, is not ready).
	stalled  atomic.Pointer[brokerProblem]
	kafkaSec kafkapipe.Security
	traces   traces                          // WithTracerProvider
	lag      atomic.Pointer[map[int32]int64] // the last consumer lag read
	dataDisk string                          // WithDataDisk
	disk     atomic.Pointer[diskState]       // its last reading
	diskWake chan struct{}                   // a reading was taken
	recent   *recentLog                      // the last warnings and errors, for /status
	poolOpts []grpcout.Option
	build    *BuildInfo
	certEnd  func() time.Time // WithServerCertificate
	logins   func() int64     // WithLoginFailures
}

// Option configures optional hooks.
type Option func(*Bridge)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(b *Bridge) { b.log = l } }

// WithMQTTCredentials sets the bridge's MQTT username and password source
// instead of mqtt.username and mqtt.password_file: the account generated
// for the embedded broker, which never touches the disk.
func WithMQTTCredentials(user string, password func() (string, error)) Option {
	return func(b *Bridge) { b.mqttUser, b.mqttPassword = user, password }
}

// WithIntake takes device requests from in as well as over the MQTT
// subscription: the embedded broker's in-process intake, where a device's
// PUBACK waits for the Kafka write. The bridge closes in when it stops
// taking requests.
func WithIntake(in *mqttin.Intake) Option { return func(b *Bridge) { b.intake = in } }

// WithTracerProvider records the spans of every request's hops (see
// package tracing). Default: none.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(b *Bridge) { b.traces = newTraces(tp) }
}

// WithServerCertificate publishes when the embedded MQTT broker's TLS
// certificate expires (notAfter, read at each scrape) as
// edgebridge_mqtt_server_cert_expiry_timestamp_seconds.
func WithServerCertificate(notAfter func() time.Time) Option {
	return func(b *Bridge) { b.certEnd = notAfter }
}

// WithLoginFailures publishes the embedded MQTT broker's refused logins
// (failed, read at each scrape) as edgebridge_mqtt_login_failures_total.
func WithLoginFailures(failed func() int64) Option {
	return func(b *Bridge) { b.logins = failed }
}

// WithDataDisk names the embedded Kafka broker's data directory: intake
// pauses while its filesystem has less than kafka.min_free_bytes free.
func WithDataDisk(dir string) Option { return func(b *Bridge) { b.dataDisk = dir } }

// WithBuildInfo publishes the binary's build as edgebridge_build_info.
func WithBuildInfo(bi BuildInfo) Option { return func(b *Bridge) { b.build = &bi } }

// WithPoolOptions passes options to the backend pool (a dialer, a resolver).
func WithPoolOptions(opts ...grpcout.Option) Option {
	return func(b *Bridge) { b.poolOpts = append(b.poolOpts, opts...) }
}

// New builds the pipeline from cfg, whose broker addresses must be concrete
// (embedded brokers already started). It does no I/O.
func New(cfg config.Config, opts ...Option) (*Bridge, error) {
	if cfg.EmbeddedMQTT() || cfg.EmbeddedKafka() {
		return nil, errors.New("bridge: start embedded brokers first and pass their addresses")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Bridge{cfg: cfg, log: slog.Default(), metrics: NewMetrics(), recent: newRecentLog(), traces: newTraces(nil),
		diskWake: make(chan struct{}, 1)}
	for _, o := range opts {
		o(b)
	}
	// Warnings and errors also go to /status.
	b.log = slog.New(teeHandler{next: b.log.Handler(), recent: b.recent})
	// The window is the one bound on records between Kafka and the
	// backends: backend.window per open stream (one stream's worth while
	// none is up), resized as streams open and close (newBackends).
	b.win = ackwindow.New(cfg.Backend.Window)
	b.settler = settle.New(settleConfig(cfg), sink{b}, settle.WithLogger(b.log))
	b.rules = ingestRules{dec: transcoder.New(cfg.MQTT.MaxPayload), maxPayload: cfg.MQTT.MaxPayload, maxRecord: cfg.Kafka.MaxMessageBytes,
		topic: cfg.Kafka.Topic, dlqTopic: cfg.Kafka.DLQTopic, replyTopic: cfg.MQTT.ReplyTopic}

	var err error
	mqttTLS, err := cfg.MQTT.TLS.Config()
	if err != nil {
		return nil, fmt.Errorf("bridge: mqtt.tls: %w", err)
	}
	user, password := cfg.MQTT.Username, b.mqttPassword
	if password == nil && cfg.MQTT.PasswordFile != "" {
		password = cfg.MQTT.Password
	}
	if b.mqttUser != "" {
		user = b.mqttUser
	}
	b.mqtt, err = mqttin.New(mqttConfig(cfg, user, password, mqttTLS), mqttin.WithLogger(b.log))
	if err != nil {
		return nil, err
	}
	if b.kafkaSec, err = cfg.Kafka.Security(); err != nil {
		return nil, fmt.Errorf("bridge: kafka security: %w", err)
	}
	b.producer, err = kafkapipe.NewProducer(producerConfig(cfg, b.kafkaSec))
	if err != nil {
		return nil, err
	}
	if len(cfg.Backend.Targets) > 0 { // else Dapr apps are the only consumers
		if err := b.newBackends(); err != nil {
			return nil, err
		}
	}
	b.metrics.observeWindow(b.win)
	b.metrics.observeMQTT(b.mqtt.Subscribed)
	if b.intake != nil {
		b.metrics.observeIntake(b.intake.Refused)
	}
	if b.certEnd != nil {
		b.metrics.observeServerCert(b.certEnd)
	}
	if b.logins != nil {
		b.metrics.observeLogins(b.logins)
	}
	if b.build != nil {
		b.metrics.observeBuild(*b.build)
	}
	if cfg.Dapr.Enabled {
		if b.dapr, err = b.newDapr(); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// newBackends sets up the gRPC hop: the consumer of the backends' group
// and the pool of backend streams.
func (b *Bridge) newBackends() error {
	var err error
	b.consumer, err = kafkapipe.NewConsumer(consumerConfig(b.cfg, b.kafkaSec), b.win, b.handleRecord,
		kafkapipe.WithLogger(b.log),
		kafkapipe.WithCommitHook(func(p int32, off int64) { b.metrics.Commits.Inc() }))
	if err != nil {
		return err
	}
	tlsConfig, err := b.cfg.Backend.TLS.Config()
	if err != nil {
		return fmt.Errorf("bridge: backend tls: %w", err)
	}
	if _, err := b.cfg.Backend.Token(); err != nil {
		return fmt.Errorf("bridge: backend token: %w", err)
	}
	var token func() (string, error)
	if b.cfg.Backend.TokenFile != "" {
		token = b.cfg.Backend.Token // read at every call: a rotated token needs no restart
	}
	be := b.cfg.Backend
	b.pool, err = grpcout.New(poolConfig(b.cfg, tlsConfig, token), append([]grpcout.Option{grpcout.WithLogger(b.log), grpcout.WithEventHook(b.metrics.GRPC.Observe),
		grpcout.WithStatsHandler(b.metrics.GRPC.Handler),
		grpcout.WithStreamsHook(func(up int) { b.win.SetCap(be.Window * max(up, 1)) })}, b.poolOpts...)...)
	return err
}

func (b *Bridge) newDapr() (*daprcomp.Server, error) {
	return daprcomp.New(daprConfig(b.cfg, b.kafkaSec), daprcomp.Deps{MQTT: b.mqtt, Kafka: b.producer, Healthy: b.healthy},
		daprcomp.WithLogger(b.log), daprcomp.WithEventHook(b.metrics.observeDapr))
}

// Metrics returns the bridge's metrics.
func (b *Bridge) Metrics() *Metrics { return b.metrics }

// Run runs the pipeline until ctx ends, then shuts down gracefully: it
// stops taking MQTT messages, lets the backends finish the window (bounded
// by shutdown.drain_timeout), commits, and returns. Everything not
// committed is redelivered on the next start. Run blocks until every
// goroutine it started has returned.
func (b *Bridge) Run(ctx context.Context) error {
	if err := b.ensureTopics(ctx); err != nil {
		return err
	}
	b.kafkaOK.Store(true)
	defer b.producer.Close()

	// life outlives ctx: replies, streams and MQTT stay up while draining.
	life, stopLife := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLife()
	intake, stopIntake := context.WithCancel(ctx)
	defer stopIntake()

	var (
		lifeWG   sync.WaitGroup
		errMu    sync.Mutex
		stageErr error
	)
	// A stage that fails (MQTT or a stream cannot be set up) ends intake too.
	stage := func(run func(context.Context) error) {
		lifeWG.Go(func() {
			if err := run(life); err != nil {
				b.log.Error("bridge: stage failed", "err", err)
				errMu.Lock()
				stageErr = errors.Join(stageErr, err)
				errMu.Unlock()
				stopIntake()
			}
		})
	}
	stage(b.mqtt.Run)
	if b.pool != nil {
		stage(b.pool.Run)
	}
	lifeWG.Go(func() { b.settler.Run(life) })
	lifeWG.Go(func() { b.watchKafka(life) })
	lifeWG.Go(func() { b.watchDisk(life) })

	g, gctx := errgroup.WithContext(intake)
	g.Go(func() error { return b.ingest(gctx) })
	if b.consumer != nil {
		g.Go(func() error { return b.consumer.Run(gctx) })
	}
	if b.dapr != nil {
		// The component drains its subscriptions after gctx ends, while
		// MQTT and the producer are still up.
		g.Go(func() error { return b.dapr.Run(gctx) })
	}
	err := g.Wait()
	b.log.Info("bridge: intake stopped", "in_flight", b.win.InFlight())
	stopLife()
	lifeWG.Wait()
	return errors.Join(err, stageErr)
}

func (b *Bridge) ensureTopics(ctx context.Context) error {
	ok := b.retry(ctx, "create topics", func() error {
		err := b.producer.EnsureTopics(ctx, b.cfg.Kafka.Partitions, b.cfg.Kafka.Topic, b.cfg.Kafka.DLQTopic)
		b.noteKafka(err)
		return err
	})
	if !ok {
		return fmt.Errorf("bridge: kafka never became ready: %w", ctx.Err())
	}
	return nil
}
