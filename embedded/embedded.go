// Package embedded runs the in-process brokers edgebridge can use on a small
// edge node or in the demo: a single-node Kafka-protocol broker (kfake) and
// an MQTT broker (mochi-mqtt), both persisting to disk.
//
// Both are started by a Listen function (which returns once the listener is
// bound, like net.Listen) and stopped by an idempotent Close.
package embedded

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
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.etcd.io/bbolt"
)

// KafkaConfig configures the embedded Kafka-protocol broker.
type KafkaConfig struct {
	// Listen is host:port; port 0 picks a free one. Default: 127.0.0.1:9092.
	Listen string
	// DataDir holds the log segments and committed offsets. Required.
	DataDir string
	// Partitions is the partition count of auto-created topics. Default: 8.
	Partitions int
	// Advertise is the host:port clients are told to connect to, when it
	// differs from Listen (a proxy or NAT in front). Default: the listen address.
	Advertise string
	// NoFsync leaves writes in the page cache instead of fsyncing every
	// produced batch before it is acknowledged: what Apache Kafka does by
	// default (it relies on replication), much faster on a single node, but a
	// machine crash can lose acknowledged records.
	// Default: false (fsync).
	NoFsync bool
	// TLS, if set, makes the broker serve TLS only.
	TLS *tls.Config
	// SASL, if set, makes the broker accept only this account.
	SASL *KafkaUser
	// Logger receives the broker's warnings and errors (a write that
	// failed, a file repaired on load). Default: slog.Default().
	Logger *slog.Logger
	// DeleteCommittedAfter, if positive, bounds storage by the backlog:
	// records every consumer group has committed are deleted once they
	// have been committed this long (see trim.go). Zero keeps every
	// record. Nothing uncommitted is ever deleted: the broker has no
	// retention by time or size.
	DeleteCommittedAfter time.Duration
	// MinFreeBytes, if positive, is the broker's high-water mark: while
	// its data disk has less free, produces are refused with
	// KAFKA_STORAGE_ERROR (see diskguard.go).
	MinFreeBytes int64
}

// Defaults of the embedded brokers: package config and `edgebridge broker`
// give the product's settings the same values by these names.
const (
	DefaultKafkaListen = "127.0.0.1:9092"
	DefaultMQTTListen  = "127.0.0.1:1883"
	DefaultPartitions  = 8
	// DefaultDeleteCommittedAfter: records every group committed are
	// deleted a minute after (KafkaConfig.DeleteCommittedAfter).
	DefaultDeleteCommittedAfter = time.Minute
	// DefaultMinFreeBytes is the bridge's high-water mark of free disk
	// (kafka.min_free_bytes); `broker kafka` refuses produces below it.
	DefaultMinFreeBytes = 256 << 20
)

// retentionInterval is how often the broker applies topic retention.
const retentionInterval = 5 * time.Minute

// KafkaUser is a SASL account: mechanism PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
type KafkaUser struct {
	Mechanism, User, Password string
}

// Kafka is a running embedded Kafka-protocol broker.
type Kafka struct {
	c    *kfake.Cluster
	trim *trimmer // nil unless DeleteCommittedAfter
	addr string
	once sync.Once
}

// ListenKafka starts the broker. Unless cfg.NoFsync, every produced batch is
// fsynced before it is acknowledged (SyncWrites), so a record acked to a
// producer survives kill -9 and a power cut.
func ListenKafka(cfg KafkaConfig) (*Kafka, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultKafkaListen
	}
	if cfg.Partitions <= 0 {
		cfg.Partitions = DefaultPartitions
	}
	if cfg.DataDir == "" {
		return nil, errors.New("embedded: kafka data dir is required")
	}
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded: kafka listen %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded: kafka listen %q: %w", cfg.Listen, err)
	}
	dir := filepath.Join(cfg.DataDir, "kafka")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	logs, err := repairLogs(dir, log)
	if err != nil {
		return nil, err
	}
	opts := []kfake.Opt{
		kfake.WithLogger(kafkaLogger{log}),
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
			if err != nil || cfg.Advertise == "" {
				return ln, err
			}
			adv, err := net.ResolveTCPAddr("tcp", cfg.Advertise)
			if err != nil {
				ln.Close()
				return nil, fmt.Errorf("embedded: kafka advertise %q: %w", cfg.Advertise, err)
			}
			return advertised{ln, adv}, nil // kfake advertises its listener's Addr
		}),
		kfake.DataDir(dir),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(cfg.Partitions),
		kfake.ClusterID("edgebridge"),
		kfake.IndexBudget(indexBudget),
		kfake.BrokerConfigs(map[string]string{
			// Records leave only when committed (trim.go), never by age or size.
			"log.retention.ms":    "-1",
			"log.retention.bytes": "-1",
			"log.segment.bytes":   strconv.Itoa(segmentBytes),
			// How often topic-level retention (the dead-letter topic's
			// retention.ms and retention.bytes) is applied; kfake's
			// default is an hour.
			"log.cleaner.backoff.ms": strconv.Itoa(int(retentionInterval / time.Millisecond)),
		}),
	}
	if !cfg.NoFsync {
		opts = append(opts, kfake.SyncWrites())
	}
	if cfg.TLS != nil {
		opts = append(opts, kfake.TLS(cfg.TLS))
	}
	if u := cfg.SASL; u != nil {
		switch u.Mechanism {
		case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		default:
			return nil, fmt.Errorf("embedded: kafka SASL mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", u.Mechanism)
		}
		if u.User == "" || u.Password == "" {
			return nil, errors.New("embedded: kafka SASL needs a user and a password")
		}
		opts = append(opts, kfake.EnableSASL(), kfake.Superuser(u.Mechanism, u.User, u.Password))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("embedded: kafka: %w", err)
	}
	if _, err := watchCatalogue(c, dir); err != nil {
		c.Close()
		return nil, err
	}
	if cfg.MinFreeBytes > 0 {
		guardDisk(c, dir, uint64(cfg.MinFreeBytes), log)
	}
	k := &Kafka{c: c, addr: c.ListenAddrs()[0]}
	if cfg.DeleteCommittedAfter > 0 {
		k.trim = startTrimmer(c, logs["groups.log"], cfg.DeleteCommittedAfter, log)
	}
	return k, nil
}

// kafkaLogger passes the broker's warnings and errors to a slog.Logger.
type kafkaLogger struct{ log *slog.Logger }

func (l kafkaLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	switch level {
	case kfake.LogLevelError:
		l.log.Error("embedded kafka: " + fmt.Sprintf(format, args...))
	case kfake.LogLevelWarn:
		l.log.Warn("embedded kafka: " + fmt.Sprintf(format, args...))
	}
}

// Addr returns the broker's host:port as advertised to clients.
func (k *Kafka) Addr() string { return k.addr }

// advertised is a listener that reports another address.
type advertised struct {
	net.Listener
	addr net.Addr
}

func (a advertised) Addr() net.Addr { return a.addr }

// Close stops the broker and flushes its state to disk. Safe to call twice.
func (k *Kafka) Close() {
	k.once.Do(func() {
		if k.trim != nil {
			k.trim.stop() // before the cluster: its calls block on a closed one
		}
		k.c.Close()
	})
}

// MQTTConfig configures the embedded MQTT broker.
type MQTTConfig struct {
	// Listen is host:port; port 0 picks a free one. Default: 127.0.0.1:1883.
	Listen string
	// DataDir holds persisted sessions, subscriptions and in-flight messages. Required.
	DataDir string
	Logger  *slog.Logger
	// Auth, if set, requires every client to authenticate and limits each
	// device to its own topics; nil lets anyone do anything.
	Auth *Auth
	// TLSListen adds a TLS listener with TLS (its certificate; with
	// ClientCAs and RequireAndVerifyClientCert, or GetConfigForClient
	// returning such, set ClientCertIdentity too).
	TLSListen string
	TLS       *tls.Config
	// ClientCertIdentity: on the TLS listener a client's certificate CN is
	// its identity (Mosquitto's use_identity_as_username), not a password.
	ClientCertIdentity bool
	// CertListen adds a second TLS listener with CertTLS (requiring client
	// certificates) where a client's certificate CN is its identity.
	CertListen string
	CertTLS    *tls.Config
	// Revoked, if set, reports a revoked client certificate: the broker
	// closes such a client's connection (checked every second; its next
	// handshake is CertTLS's to refuse).
	Revoked func(*x509.Certificate) bool
	// Intake, if set, takes device requests inside the broker: a request
	// is PUBACKed only once Intake took it (see intakeHook), and never
	// routed to subscribers. Nil: requests are routed like any publish.
	// An Intake that is also Replies is given the broker's in-process
	// publish for the bridge's replies (MQTT.reply).
	Intake Taker
	// IntakeWait bounds how long one request waits for Intake, at most
	// half the device's keepalive. Default: DefaultIntakeWait.
	IntakeWait time.Duration
	// MessageExpiry is how long a message waits for a client that is
	// offline or does not acknowledge it (replies and commands for a
	// device, MQTT 3.1.1 and 5 alike), and how long a retained message is
	// kept. Default: DefaultMessageExpiry.
	MessageExpiry time.Duration
}

// DefaultMessageExpiry is how long the embedded broker keeps a message for
// a client that is offline: a week, so a terminal switched off over a long
// weekend still gets its replies.
const DefaultMessageExpiry = 7 * 24 * time.Hour

// MaxInflight is the most QoS 1 messages the embedded broker holds for one
// client (queued while it is offline or not acknowledged): MQTT's packet
// ids allow no more. Past it, new messages for that client are dropped
// (logged: "client store quota reached").
const MaxInflight = 65535

// MaxPacketSize is the largest MQTT packet the embedded broker accepts,
// the same as max_packet_size in the shipped mosquitto.conf.
const MaxPacketSize = 4 << 20

// MQTT is a running embedded MQTT broker.
type MQTT struct {
	s             *mqtt.Server
	addr, tlsAddr string
	certAddr      string
	auth          *authHook // nil without Auth
	once          sync.Once
	closing       sync.RWMutex // reply holds it to read, Close to write: no reply while the broker closes
	closed        bool
	stop          chan struct{} // closed by Close: ends watchIdentities
	watching      chan struct{} // closed when watchIdentities has ended; nil without it
}

// ListenMQTT starts the broker. Sessions (clean session off), subscriptions
// and QoS 1 messages not yet acknowledged are persisted in a bbolt file, so
// they survive a restart or a kill -9 of the process. The file is not
// fsynced per message (an fsync per QoS 1 message under bbolt's single
// writer capped the broker at ~450 msg/s here), so a power loss can lose the
// last messages — the same trade-off as Mosquitto's periodic autosave.
// Writes made at the same time share a transaction (third_party/mochi
// change 7); each still returns once its own is committed.
func ListenMQTT(cfg MQTTConfig) (*MQTT, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultMQTTListen
	}
	if cfg.DataDir == "" {
		return nil, errors.New("embedded: mqtt data dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	// Bind first, so a taken port is an error here and port 0 is resolved.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded: mqtt listen: %w", err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()

	caps := mqtt.NewDefaultServerCapabilities()
	// A client with this many writes queued is disconnected; its QoS 1
	// messages stay in its session (third_party/mochi: no drop).
	caps.MaximumClientWritesPending = 8192
	// QoS 1 messages held per client (queued while offline or un-ACKed).
	caps.MaximumInflight = MaxInflight
	// The contract is QoS 1. QoS 2 state would share the client's packet
	// ids with the messages sent to it (mochi-mqtt/server#545); a QoS 2
	// publish is handled as QoS 1.
	caps.MaximumQos = 1
	if cfg.MessageExpiry <= 0 {
		cfg.MessageExpiry = DefaultMessageExpiry
	}
	caps.MaximumMessageExpiryInterval = int64(cfg.MessageExpiry / time.Second)
	// Like the shipped Mosquitto (max_packet_size): a client sending a
	// larger packet is disconnected before the broker buffers it.
	caps.MaximumPacketSize = MaxPacketSize
	replies, _ := cfg.Intake.(Replies)
	// The inline client is mochi's in-process publisher, for replies.
	s := mqtt.New(&mqtt.Options{Logger: slog.New(quiet{cfg.Logger.Handler()}), Capabilities: caps, InlineClient: replies != nil})
	var errs []error
	var ah *authHook
	if cfg.Auth != nil {
		ah = &authHook{auth: *cfg.Auth, pw: passwordFile{path: cfg.Auth.PasswordFile}}
		errs = append(errs, s.AddHook(ah, nil))
	} else {
		errs = append(errs, s.AddHook(new(auth.AllowHook), nil))
	}
	if replies != nil {
		errs = append(errs, s.AddHook(new(inlineIDHook), nil))
	}
	if cfg.Intake != nil {
		wait := cfg.IntakeWait
		if wait <= 0 {
			wait = DefaultIntakeWait
		}
		errs = append(errs, s.AddHook(&intakeHook{in: cfg.Intake, wait: wait}, nil))
	}
	errs = append(errs, s.AddHook(&boltStore{Hook: new(bolt.Hook)}, &bolt.Options{
		Path: filepath.Join(cfg.DataDir, "mqtt.bolt"),
		// NoFreelistSync: a commit does not write the free-page list too
		// (a lone write 34 -> 28 us, BenchmarkEdgebridgeInflight in
		// third_party/mochi); opening the file rebuilds it by a scan.
		Options: &bbolt.Options{Timeout: time.Second, NoSync: true, NoFreelistSync: true},
	}))
	errs = append(errs, s.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})))
	tlsAddr := ""
	if cfg.TLSListen != "" {
		tln, err := net.Listen("tcp", cfg.TLSListen)
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("embedded: mqtt tls listen: %w", err)
		}
		tlsAddr = tln.Addr().String()
		_ = tln.Close()
		id := "tls"
		if cfg.ClientCertIdentity {
			id = certListener
		}
		errs = append(errs, s.AddListener(listeners.NewTCP(listeners.Config{ID: id, Address: tlsAddr, TLSConfig: cfg.TLS})))
	}
	certAddr := ""
	if cfg.CertListen != "" {
		cln, err := net.Listen("tcp", cfg.CertListen)
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("embedded: mqtt certificate listen: %w", err)
		}
		certAddr = cln.Addr().String()
		_ = cln.Close()
		errs = append(errs, s.AddListener(listeners.NewTCP(listeners.Config{ID: certListener, Address: certAddr, TLSConfig: cfg.CertTLS})))
	}
	if err := errors.Join(errs...); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("embedded: mqtt: %w", err)
	}
	if err := s.Serve(); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("embedded: mqtt serve: %w", err)
	}
	m := &MQTT{s: s, addr: addr, tlsAddr: tlsAddr, certAddr: certAddr, stop: make(chan struct{}), auth: ah}
	if replies != nil {
		replies.SetReplier(m.reply)
	}
	if ah != nil && (ah.pw.path != "" || cfg.Revoked != nil || ah.auth.SeenFile != "") {
		m.watching = make(chan struct{})
		go func() {
			defer close(m.watching)
			ah.watchIdentities(s, cfg.Revoked, m.stop, cfg.Logger)
		}()
	}
	return m, nil
}

// errClosed is a reply's error once the broker is closing.
var errClosed = errors.New("embedded: mqtt broker closed")

// reply publishes a device reply from the broker's own inline client, QoS
// 1: mochi routes it to the topic's subscribers and stores it in each
// offline persistent session (in bbolt, as for a client's publish) before
// it returns, which is all a PUBACK to a publishing client would mean. The
// topic is the caller's to check (mochi does not check an inline client's).
func (m *MQTT) reply(topic string, payload []byte) error {
	m.closing.RLock()
	defer m.closing.RUnlock()
	if m.closed {
		return errClosed
	}
	return m.s.Publish(topic, payload, false, 1)
}

// CertAddr is the client-certificate listener's address; "" without one.
func (m *MQTT) CertAddr() string { return m.certAddr }

// LoginFailures counts the logins refused so far (0 without Auth).
func (m *MQTT) LoginFailures() int64 {
	if m.auth == nil {
		return 0
	}
	return m.auth.fail.total.Load()
}

// Addr returns the broker's host:port.
func (m *MQTT) Addr() string { return m.addr }

// TLSAddr is the TLS listener's address; "" without one.
func (m *MQTT) TLSAddr() string { return m.tlsAddr }

// Inflight returns how many QoS 1/2 messages the broker holds un-acknowledged
// for clientID (0 for an unknown client).
func (m *MQTT) Inflight(clientID string) int {
	cl, ok := m.s.Clients.Get(clientID)
	if !ok {
		return 0
	}
	return cl.State.Inflight.Len()
}

// Retained reports whether the broker holds a retained message on topic.
func (m *MQTT) Retained(topic string) bool {
	_, ok := m.s.Topics.Retained.Get(topic)
	return ok
}

// Close stops the broker. Safe to call twice.
func (m *MQTT) Close() {
	m.once.Do(func() {
		m.closing.Lock()
		m.closed = true
		m.closing.Unlock()
		close(m.stop)
		_ = m.s.Close()
		if m.watching != nil {
			<-m.watching // its last write of the last-seen times
		}
	})
}

// quiet drops mochi's "failed to get data" error, which its storage hook
// logs on every first start (no $SYS info stored yet).
type quiet struct{ slog.Handler }

func (q quiet) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "failed to get data" {
		return nil
	}
	return q.Handler.Handle(ctx, r)
}

func (q quiet) WithAttrs(as []slog.Attr) slog.Handler { return quiet{q.Handler.WithAttrs(as)} }
func (q quiet) WithGroup(name string) slog.Handler    { return quiet{q.Handler.WithGroup(name)} }

// boltStore fixes mochi's bolt hook, which stores in-flight messages
// without their packet id (it is only in the key, "…:<id>"): restored
// as id 0, they made every resumed session fail with "resend inflight:
// protocol violation: missing packet id" after a broker restart.
//
// It also leaves out the hook's OnSysInfoTick (a copy of $SYS stats in the
// file, which nothing reads): mochi's Close stops the hook while its event
// loop may still be ticking, and the tick read the closed database (a data
// race the race detector caught in a fault test's teardown).
type boltStore struct{ *bolt.Hook }

// Provides is the bolt hook's, without OnSysInfoTick.
func (b *boltStore) Provides(event byte) bool {
	return event != mqtt.OnSysInfoTick && b.Hook.Provides(event)
}

func (b *boltStore) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := b.Hook.StoredInflightMessages()
	for i := range msgs {
		if msgs[i].PacketID != 0 {
			continue
		}
		id := msgs[i].ID[strings.LastIndexByte(msgs[i].ID, ':')+1:]
		if n, perr := strconv.ParseUint(id, 10, 16); perr == nil {
			msgs[i].PacketID = uint16(n)
		}
	}
	return msgs, err
}
