// Package rig is edgebridge in one process, for the tests of the assembled
// pipeline and for the demo (grpc-go's stubserver idea): brokers, a
// backend and a node running the bridge, each changed by options.
//
// By default the rig starts an embedded Kafka broker and an embedded MQTT
// broker of its own and the bridge connects to them as to any outside
// broker; with Shipped the node runs the brokers itself, as `edgebridge
// run` does with the shipped config (device requests taken inside the
// MQTT broker, devices over TLS with passwords from the site CA).
//
//	r := rig.Test(t, rig.Partitions(4))
//	r.Config.Backend.Window = 32 // between New and Start
//	b := r.StartTest(t)          // ready; stopped at the end of the test
package rig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"

	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/node"
	"github.com/edgebridge/edgebridge/payment"
	"github.com/edgebridge/edgebridge/siteca"
)

// Rig is one in-process edgebridge and what it talks to.
type Rig struct {
	Dir string
	// Kafka and MQTT are the brokers the rig started; nil with Shipped.
	Kafka *embedded.Kafka
	MQTT  *embedded.MQTT
	// Backend is the backend's address ("" with NoBackend); Ledger its
	// payments when it serves paymentd's handler.
	Backend string
	Ledger  *payment.Ledger
	// Config is the bridge's: change it between New and Start.
	Config config.Config
	// Running is the node as it runs, set by Start.
	Running node.Running

	set  settings
	gs   *grpc.Server
	stop context.CancelFunc
	done chan error
}

type settings struct {
	partitions int
	kafkaDir   string
	handler    backend.Handler
	backendOK  bool
	shipped    bool
	log        *slog.Logger
	nodeOpts   []node.Option
}

// Option changes a Rig.
type Option func(*settings)

// Partitions of the request topic (default 2).
func Partitions(n int) Option { return func(s *settings) { s.partitions = n } }

// KafkaDir is the Kafka broker's data directory (default: in the rig's).
func KafkaDir(dir string) Option { return func(s *settings) { s.kafkaDir = dir } }

// Handler is what the backend does with each request (default: paymentd's
// handler, its results in Ledger).
func Handler(h backend.Handler) Option { return func(s *settings) { s.handler = h } }

// NoBackend starts no backend: the test sets Config.Backend.Targets.
func NoBackend() Option { return func(s *settings) { s.backendOK = false } }

// Shipped runs the brokers inside the node, as shipped.
func Shipped() Option { return func(s *settings) { s.shipped = true } }

// Logger is the node's and the backend's (default: warnings to stderr).
func Logger(l *slog.Logger) Option { return func(s *settings) { s.log = l } }

// NodeOptions are passed to node.Run (bridge options, build info).
func NodeOptions(opts ...node.Option) Option {
	return func(s *settings) { s.nodeOpts = append(s.nodeOpts, opts...) }
}

// New starts the brokers (unless Shipped) and the backend in dir, and
// makes Config point at them. Close stops them.
func New(dir string, opts ...Option) (_ *Rig, err error) {
	r := &Rig{Dir: dir, set: settings{partitions: 2, backendOK: true,
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}}
	for _, o := range opts {
		o(&r.set)
	}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	c := config.Default()
	c.Kafka.Partitions = r.set.partitions
	c.Admin.Listen = "127.0.0.1:0"
	if r.set.shipped {
		c.MQTT.EmbeddedListen = "127.0.0.1:0"
		c.MQTT.EmbeddedAuth.PasswordFile = filepath.Join(node.SiteDir(dir), devices.PasswordFile)
		c.MQTT.EmbeddedTLS = config.EmbeddedTLS{Listen: "127.0.0.1:0", Names: []string{"127.0.0.1"}}
		c.Kafka.EmbeddedListen = "127.0.0.1:0"
		c.Kafka.DataDir = dir
	} else {
		kafkaDir := r.set.kafkaDir
		if kafkaDir == "" {
			kafkaDir = filepath.Join(dir, "kafka")
		}
		if r.Kafka, err = embedded.ListenKafka(embedded.KafkaConfig{Listen: "127.0.0.1:0", DataDir: kafkaDir, Partitions: r.set.partitions}); err != nil {
			return nil, err
		}
		if r.MQTT, err = embedded.ListenMQTT(embedded.MQTTConfig{Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "mqtt")}); err != nil {
			return nil, err
		}
		c.MQTT.Broker = "tcp://" + r.MQTT.Addr()
		c.Kafka.Brokers = []string{r.Kafka.Addr()}
		c.Kafka.DataDir = filepath.Join(dir, "bridge") // the bridge keeps its group member id there
	}
	if r.set.backendOK {
		if err := r.startBackend(); err != nil {
			return nil, err
		}
		c.Backend.Targets = []string{r.Backend}
	}
	r.Config = c
	return r, nil
}

func (r *Rig) startBackend() error {
	handle := r.set.handler
	var results backend.Store
	if handle == nil {
		var err error
		if r.Ledger, err = payment.OpenLedger(filepath.Join(r.Dir, "ledger.jsonl")); err != nil {
			return err
		}
		handle, results = payment.Handler(payment.DefaultLimit), r.Ledger
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	r.gs = backend.NewGRPCServer()
	backend.NewServer(backend.Config{ID: "rig-backend"}, handle, results, backend.WithLogger(r.set.log)).Register(r.gs)
	go func() { _ = r.gs.Serve(ln) }()
	r.Backend = ln.Addr().String()
	return nil
}

// Start runs a node on Config, with more options for the bridge, until
// Stop; it returns once the bridge is constructed (not yet ready: see
// AwaitReady).
func (r *Rig) Start(opts ...bridge.Option) error {
	if r.stop != nil {
		return errors.New("rig: already started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan node.Running, 1)
	done := make(chan error, 1)
	nopts := append([]node.Option{node.OnStart(func(n node.Running) { started <- n })}, r.set.nodeOpts...)
	nopts = append(nopts, node.WithBridgeOptions(opts...))
	go func() { done <- node.Run(ctx, r.Config, r.set.log, nopts...) }()
	select {
	case r.Running = <-started:
		r.stop, r.done = cancel, done
		return nil
	case err := <-done:
		cancel()
		return fmt.Errorf("rig: the node did not start: %w", err)
	}
}

// AwaitReady waits up to limit until the bridge is ready.
func (r *Rig) AwaitReady(ctx context.Context, limit time.Duration) error {
	return await.Cond(ctx, limit, "rig: bridge ready", func() error {
		if ok, why := r.Running.Bridge.Ready(); !ok {
			return fmt.Errorf("%v", why)
		}
		return nil
	})
}

// Stop stops the node (the bridge drains) and returns Run's error; the
// rig can Start again.
func (r *Rig) Stop() error {
	if r.stop == nil {
		return nil
	}
	r.stop()
	err := <-r.done
	r.stop, r.done = nil, nil
	return err
}

// StopBackend stops the backend's server, closing its streams.
func (r *Rig) StopBackend() {
	if r.gs != nil {
		r.gs.Stop()
	}
}

// Close stops the node, the backend and the brokers.
func (r *Rig) Close() error {
	err := r.Stop()
	r.StopBackend()
	if r.Ledger != nil {
		err = errors.Join(err, r.Ledger.Close())
	}
	if r.MQTT != nil {
		r.MQTT.Close()
	}
	if r.Kafka != nil {
		r.Kafka.Close()
	}
	return err
}

// DeviceURL is where devices connect: the rig's MQTT broker, or with
// Shipped the node's TLS listener (once started).
func (r *Rig) DeviceURL() string {
	if r.MQTT != nil {
		return "tcp://" + r.MQTT.Addr()
	}
	return "ssl://" + r.Running.DeviceTLS
}

// AddDevice gives device id a password, as `edgebridge device add` does
// (Shipped), and returns it. The site's files are made if missing.
func (r *Rig) AddDevice(id string) (password string, err error) {
	dir := node.SiteDir(r.Dir)
	if err := os.MkdirAll(dir, siteca.DirMode); err != nil {
		return "", err
	}
	password = devices.NewPassword()
	return password, devices.Open(dir).AddPassword(id, []byte(password))
}

// DeviceTLS is a device's TLS config trusting the site CA (Shipped, once
// started).
func (r *Rig) DeviceTLS() (*tls.Config, error) {
	site, err := siteca.Load(node.SiteDir(r.Dir))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(site.CAPEM())
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, nil
}

// KafkaAddr is the Kafka broker's address (with Shipped, once started).
func (r *Rig) KafkaAddr() string {
	if r.Kafka != nil {
		return r.Kafka.Addr()
	}
	return r.Running.Config.Kafka.Brokers[0]
}

// Records reads the first n records of topic, waiting up to limit.
func (r *Rig) Records(topic string, n int, limit time.Duration) ([]*kgo.Record, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(r.KafkaAddr()), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(rec *kgo.Record) { out = append(out, rec) })
	}
	if len(out) < n {
		return out, fmt.Errorf("rig: %d records of %s after %s, want %d", len(out), topic, limit, n)
	}
	return out, nil
}
