// Package config loads and validates edgebridge's YAML configuration.
// Unknown keys are errors; Validate lists every problem at once.
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/tlsfiles"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/mqttin"
)

// Embedded is the broker value that selects an in-process broker.
const Embedded = "embedded"

// Config is the whole file. Zero values mean the documented default.
type Config struct {
	MQTT     MQTT     `yaml:"mqtt"`
	Kafka    Kafka    `yaml:"kafka"`
	Backend  Backend  `yaml:"backend"`
	Dapr     Dapr     `yaml:"dapr"`
	Admin    Admin    `yaml:"admin"`
	Tracing  Tracing  `yaml:"tracing"`
	Shutdown Shutdown `yaml:"shutdown"`
	Log      Log      `yaml:"log"`
}

// Log settings.
type Log struct {
	// Format of the lines on stderr: text (key=value) or json. Default: text.
	Format string `yaml:"format"`
	// Level: debug, info, warn or error. Default: info.
	Level string `yaml:"level"`
}

// MQTT settings.
type MQTT struct {
	// Broker URL, or "embedded". Default: embedded.
	Broker string `yaml:"broker"`
	// EmbeddedListen is where the embedded broker listens. Default: 127.0.0.1:1883.
	EmbeddedListen string `yaml:"embedded_listen"`
	// ClientID must be stable across restarts. Default: edgebridge-1.
	ClientID string `yaml:"client_id"`
	// Subscribe lists request topic filters; the last level is the device id.
	// Default: ["payment/request/+"].
	Subscribe []string `yaml:"subscribe"`
	// ReplyTopic with {device_id}. Default: payment/response/{device_id}.
	ReplyTopic string `yaml:"reply_topic"`
	// Username is the bridge's own MQTT identity. Default: none.
	Username string `yaml:"username"`
	// PasswordFile holds the bridge's password (the whole file, less a
	// trailing newline); read at every connection, so a rotated password
	// is used from the next reconnect.
	PasswordFile string `yaml:"password_file"`
	// TLS to the broker (broker URL ssl:// or tls://); off unless enabled.
	TLS TLS `yaml:"tls"`
	// EmbeddedAuth makes the embedded broker authenticate every client
	// and limit each device to its own topics (see README "Security").
	EmbeddedAuth EmbeddedAuth `yaml:"embedded_auth"`
	// EmbeddedTLS adds a TLS listener to the embedded broker.
	EmbeddedTLS EmbeddedTLS `yaml:"embedded_tls"`
	// EmbeddedAllowInsecure lets the embedded broker take devices from the
	// network without TLS (embedded_listen off loopback) or without a login
	// (embedded_tls.listen off loopback with neither embedded_auth nor
	// client certificates). Refused otherwise: for a site still moving its
	// terminals off plain 1883 (docs/DEPLOY.md "Upgrading a site from plain
	// 1883"). `validate` warns while it is on. Default: false.
	EmbeddedAllowInsecure bool `yaml:"embedded_allow_insecure"`
	// EmbeddedMessageExpiry is how long the embedded broker keeps a reply
	// or command for a device that is offline (MQTT 3.1.1 and 5).
	// Default: 168h (embedded.DefaultMessageExpiry).
	EmbeddedMessageExpiry time.Duration `yaml:"embedded_message_expiry"`
	// MaxPayload in bytes: a larger request is dead-lettered (its first
	// 4 KiB) without being read. At most kafka.max_message_bytes minus
	// 8 KiB, so the dead letter of any payload within the limit carries it
	// whole. Default: 16384.
	MaxPayload int `yaml:"max_payload"`
}

// EmbeddedAuth settings of the embedded MQTT broker.
type EmbeddedAuth struct {
	// PasswordFile in Mosquitto's format (mosquitto_passwd); read again
	// when it changes. Setting it (or embedded_tls.client_ca_file) turns
	// authentication on.
	PasswordFile string `yaml:"password_file"`
}

// EmbeddedTLS is the embedded MQTT broker's TLS listener for devices.
type EmbeddedTLS struct {
	// Listen address, e.g. 0.0.0.0:8883. Empty: no TLS listener.
	Listen string `yaml:"listen"`
	// CertFile and KeyFile: the broker's certificate; re-read when they
	// change. Empty: the site CA (kafka.data_dir/site, made on the first
	// start) issues one for Names and renews it before it expires.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Names are the DNS names and IP addresses devices dial (the node's
	// address, a site host name), for the certificate the site CA issues.
	// An entry may hold several, comma-separated, and empty ones are
	// dropped, so one environment variable can carry a list or nothing.
	// Required without cert_file.
	Names []string `yaml:"names"`
	// ClientCAFile: require client certificates signed by these CAs; the
	// certificate's CN is then the device's identity. On cert_listen when
	// it is set, else on listen.
	ClientCAFile string `yaml:"client_ca_file"`
	// CertListen adds a second TLS listener, e.g. 0.0.0.0:8884, for devices
	// identified by a client certificate (from client_ca_file, or the site
	// CA when neither cert_file nor client_ca_file is given); listen then
	// serves devices with passwords.
	CertListen string `yaml:"cert_listen"`
	// CRLFile lists revoked client certificates (re-read when it changes).
	// Default with the site CA: its crl.pem (edgebridge device remove).
	CRLFile string `yaml:"crl_file"`
}

// configured reports whether any embedded_tls setting is given.
func (e EmbeddedTLS) configured() bool {
	return e.Listen != "" || e.CertFile != "" || e.KeyFile != "" || e.ClientCAFile != "" || len(e.Names) > 0 ||
		e.CertListen != "" || e.CRLFile != ""
}

// splitNames splits comma-separated entries and drops empty ones.
func splitNames(in []string) []string {
	var out []string
	for _, e := range in {
		for _, n := range strings.Split(e, ",") {
			if n = strings.TrimSpace(n); n != "" {
				out = append(out, n)
			}
		}
	}
	return out
}

// AuthEnabled reports whether the embedded broker authenticates clients.
func (m MQTT) AuthEnabled() bool {
	return m.EmbeddedAuth.PasswordFile != "" || m.EmbeddedTLS.ClientCAFile != "" || m.EmbeddedTLS.CertListen != ""
}

// Kafka settings.
type Kafka struct {
	// Brokers, or ["embedded"]. Default: ["embedded"].
	Brokers []string `yaml:"brokers"`
	// EmbeddedListen is where the embedded broker listens. Default: 127.0.0.1:9092.
	EmbeddedListen string `yaml:"embedded_listen"`
	// DataDir of the embedded brokers. Default: ./edgebridge-data.
	DataDir string `yaml:"data_dir"`
	// Topic for requests. Default: edgebridge.payment.requests.
	Topic string `yaml:"topic"`
	// DLQTopic for poison messages. Default: edgebridge.payment.dlq.
	DLQTopic string `yaml:"dlq_topic"`
	// DLQRetention and DLQRetentionBytes bound the dead-letter topic (no
	// consumer group commits on it, so nothing else deletes it): its
	// retention.ms, and its retention.bytes per partition, set when the
	// bridge creates the topic (a topic that exists keeps its own
	// configs). The request topic is created with retention.ms and
	// retention.bytes -1: nothing unprocessed is deleted by age or size.
	// Defaults: 720h (30 days) and 128 MiB.
	DLQRetention      time.Duration `yaml:"dlq_retention"`
	DLQRetentionBytes int64         `yaml:"dlq_retention_bytes"`
	// GroupID of the consumer group. Default: edgebridge.
	GroupID string `yaml:"group_id"`
	// Partitions of topics the bridge creates. Default: 8.
	Partitions int `yaml:"partitions"`
	// BatchTimeout is how long the bridge waits for more device messages
	// before it writes a batch to Kafka (Kafka's linger.ms). Default: 0:
	// write what has arrived; what arrives during a write is the next batch.
	BatchTimeout time.Duration `yaml:"batch_timeout"`
	// CommitInterval of the consumer. Default: 200ms.
	CommitInterval time.Duration `yaml:"commit_interval"`
	// SessionTimeout of the bridge's (and Dapr subscriptions') consumer
	// group membership: a crashed bridge holds its partitions this long
	// before a restarted one gets them; heartbeats go every fifth of it.
	// Shorter recovers faster, longer rides out longer stalls. Kafka
	// brokers refuse less than their group.min.session.timeout.ms (6s by
	// default, the embedded broker's too). Default: 6s.
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// HeartbeatInterval of that membership: a member that misses heartbeats
	// for session_timeout is dropped, so it must be well below it (at most
	// a third). Default: a fifth of session_timeout.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// MinFreeBytes is the embedded broker's high-water mark: intake pauses
	// (no new PUBACKs, /readyz 503) while data_dir's filesystem has less
	// free, and resumes at half as much again (at least 1 MiB) above it.
	// A negative value turns it off. Default: 256 MiB.
	MinFreeBytes int64 `yaml:"min_free_bytes"`
	// DeleteCommittedAfter bounds the embedded broker's storage by the
	// backlog: records every consumer group (the backends' and each Dapr
	// subscription's) has committed are deleted once committed this long,
	// so disk use follows what is not processed yet. Nothing uncommitted
	// is deleted, whatever its age. A negative value keeps every record.
	// Default: 1m.
	DeleteCommittedAfter time.Duration `yaml:"delete_committed_after"`
	// MaxMessageBytes is the brokers' message.max.bytes (or the topics'
	// max.message.bytes, if lower): the largest record batch Kafka
	// accepts. The bridge never sends a larger one. Default: 1048576
	// (Apache Kafka's and the embedded broker's default).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// TLS to the brokers; off unless enabled. With the embedded broker,
	// ca_file trusts embedded_tls's certificate.
	TLS TLS `yaml:"tls"`
	// SASL login to the brokers; off unless a mechanism is set. With the
	// embedded broker, it is the one account the broker accepts.
	SASL SASL `yaml:"sasl"`
	// EmbeddedTLS makes the embedded broker serve TLS only.
	EmbeddedTLS EmbeddedKafkaTLS `yaml:"embedded_tls"`
}

// SASL settings of the Kafka connections.
type SASL struct {
	// Mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512. Empty: no SASL.
	Mechanism string `yaml:"mechanism"`
	// Username to log in as.
	Username string `yaml:"username"`
	// PasswordFile holds the password (the whole file, less a trailing
	// newline); read at every new connection.
	PasswordFile string `yaml:"password_file"`
}

// Password reads the SASL password file.
func (s SASL) Password() (string, error) { return readSecret(s.PasswordFile) }

// EmbeddedKafkaTLS is the embedded Kafka broker's certificate.
type EmbeddedKafkaTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Security returns the TLS and SASL settings of every Kafka connection.
func (k Kafka) Security() (kafkapipe.Security, error) {
	var sec kafkapipe.Security
	var err error
	if sec.TLS, err = k.TLS.Config(); err != nil {
		return sec, err
	}
	if k.SASL.Mechanism != "" {
		sec.SASL, err = kafkapipe.NewSASL(k.SASL.Mechanism, k.SASL.Username, k.SASL.Password)
	}
	return sec, err
}

// DefaultMaxMessageBytes is Kafka's default message.max.bytes.
const DefaultMaxMessageBytes = 1 << 20

// Backend settings: the gRPC hop to the backends.
type Backend struct {
	// Targets are gRPC addresses (host:port) of backends; a host name that
	// resolves to several addresses gets a stream to each. Backends must
	// share their dedup store. Default: ["127.0.0.1:7070"], or none when
	// dapr.enabled (Dapr apps are then the only consumers).
	Targets []string `yaml:"targets"`
	// Window is the most un-ACKed deliveries per stream, and the bridge's
	// window holds this many Kafka records per open stream (one stream's
	// worth while none is up). Default: 128.
	Window int `yaml:"window"`
	// MaxAttempts for a delivery answered RETRY before it is dead-lettered. Default: 5.
	MaxAttempts int `yaml:"max_attempts"`
	// RetryBackoff is the first delay before redelivering a RETRY; it doubles. Default: 1s.
	RetryBackoff time.Duration `yaml:"retry_backoff"`
	// MaxRequestAge, if set, is how long after its receipt a request may
	// still be sent to a backend for the first time. One that no backend
	// was sent by then (the backends were unreachable that long) is
	// dead-lettered (reason request_expired) and its device gets a REJECTED
	// reply, code unavailable. A request a backend may already have seen
	// (sent before, or perhaps sent by a run that crashed) is delivered
	// whatever its age: its backend's dedup answers it. Only for the
	// backend.targets path, with one bridge per consumer group. Default: 0
	// (off: requests wait for a backend as long as it takes).
	MaxRequestAge time.Duration `yaml:"max_request_age"`
	// OpenTimeout bounds opening a stream (up to the backend's welcome). Default: 10s.
	OpenTimeout time.Duration `yaml:"open_timeout"`
	// AckTimeout: a stream with a delivery un-ACKed this long is replaced
	// and the delivery resent with the same message id. Default: 30s.
	AckTimeout time.Duration `yaml:"ack_timeout"`
	// ResolveInterval between DNS lookups of target host names. Default: 30s.
	ResolveInterval time.Duration `yaml:"resolve_interval"`
	// Reconnect is the backoff between stream attempts.
	Reconnect Reconnect `yaml:"reconnect"`
	// Heartbeat is the application-level ping/pong.
	Heartbeat Heartbeat `yaml:"heartbeat"`
	// Keepalive is HTTP/2 keepalive on each backend connection.
	Keepalive Keepalive `yaml:"keepalive"`
	// TLS to the backends; off unless enabled.
	TLS TLS `yaml:"tls"`
	// TokenFile holds a bearer token sent with every call (requires TLS).
	TokenFile string `yaml:"token_file"`
}

// Reconnect is exponential backoff with jitter between stream attempts.
type Reconnect struct {
	// Initial delay; it doubles after each failure. Default: 1s.
	Initial time.Duration `yaml:"initial"`
	// Max caps the delay; TLS and auth failures always wait this long. Default: 30s.
	Max time.Duration `yaml:"max"`
	// Jitter spreads each delay by this fraction, ±. Default: 0.2.
	Jitter float64 `yaml:"jitter"`
	// ResetAfter: a stream up this long resets the delay. Default: 30s.
	ResetAfter time.Duration `yaml:"reset_after"`
	// HealthCheckAfter consecutive failures, ask grpc.health.v1 before the
	// next attempt. Default: 2.
	HealthCheckAfter int `yaml:"health_check_after"`
}

// Heartbeat is the ping/pong on each stream. The interval adapts between
// min_interval and max_interval: longer while pongs are slow (above
// slow_rtt) or the backend reports over 90% load, shorter while healthy.
type Heartbeat struct {
	// Interval between pings at first. Default: 5s.
	Interval time.Duration `yaml:"interval"`
	// MinInterval. Default: 1s (or interval, if shorter).
	MinInterval time.Duration `yaml:"min_interval"`
	// MaxInterval; must be below timeout. Default: 2 x interval, at most 2/3 of timeout.
	MaxInterval time.Duration `yaml:"max_interval"`
	// Timeout: a stream with no frame from the backend this long is
	// replaced. Default: 3 x interval.
	Timeout time.Duration `yaml:"timeout"`
	// SlowRTT: pongs slower than this lengthen the interval. Default: 500ms.
	SlowRTT time.Duration `yaml:"slow_rtt"`
}

// Keepalive is HTTP/2 keepalive; backends must permit pings this often.
type Keepalive struct {
	// Time of silence before a ping; at least 10s. Default: 20s.
	Time time.Duration `yaml:"time"`
	// Timeout for the ping's answer. Default: 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// TLS to the backends.
type TLS struct {
	// Enabled turns TLS on; with no ca_file the system roots verify the backend.
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of the CAs that sign backend certificates.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the bridge's client certificate (mutual TLS).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in backend certificates.
	// Default: each target's host.
	ServerName string `yaml:"server_name"`
}

// Dapr settings: edgebridge as a Dapr pluggable component (pubsub.<name>
// and bindings.<name>) on a Unix socket.
type Dapr struct {
	// Enabled serves the component socket.
	Enabled bool `yaml:"enabled"`
	// SocketFolder is where daprd looks for component sockets.
	// Default: $DAPR_COMPONENTS_SOCKETS_FOLDER, else /tmp/dapr-components-sockets.
	SocketFolder string `yaml:"socket_folder"`
	// SocketName: the socket is <socket_folder>/<socket_name>.sock and the
	// component types are pubsub.<socket_name> and bindings.<socket_name>.
	// Default: edgebridge.
	SocketName string `yaml:"socket_name"`
	// ReplyTopic: what a Dapr app publishes here goes to the device over
	// MQTT instead of to Kafka. Default: payment.replies.
	ReplyTopic string `yaml:"reply_topic"`
	// BindingTopics: the MQTT topic filters the output binding may publish
	// to. Default: device/+/command and mqtt.reply_topic's topics. A
	// device request topic is never allowed.
	BindingTopics []string `yaml:"binding_topics"`
	// Window is the most un-ACKed messages per subscription. Default: 128.
	Window int `yaml:"window"`
	// MaxAttempts for a message a Dapr app answers with an error before it
	// is dead-lettered. Default: 5.
	MaxAttempts int `yaml:"max_attempts"`
	// RetryBackoff is the first delay before redelivering it; it doubles. Default: 1s.
	RetryBackoff time.Duration `yaml:"retry_backoff"`
}

// DefaultDaprSocketFolder is daprd's own default.
const DefaultDaprSocketFolder = "/tmp/dapr-components-sockets"

// DaprSocketFolderEnv is the variable daprd reads the socket folder from.
const DaprSocketFolderEnv = "DAPR_COMPONENTS_SOCKETS_FOLDER"

// SocketPath is the component socket's path.
func (d Dapr) SocketPath() string { return filepath.Join(d.SocketFolder, d.SocketName+".sock") }

// Admin settings.
type Admin struct {
	// Listen address of /metrics, /healthz, /readyz. Default: 127.0.0.1:9464.
	Listen string `yaml:"listen"`
	// Pprof serves Go's profiles under /debug/pprof/ too. Default: false.
	Pprof bool `yaml:"pprof"`
}

// Tracing settings: OpenTelemetry spans of every hop of a request, sent
// over OTLP/gRPC. Off unless an endpoint is set.
type Tracing struct {
	// Endpoint of the OTLP/gRPC collector, host:port. Default: "" (off).
	Endpoint string `yaml:"endpoint"`
	// SampleRatio of new traces recorded, above 0 up to 1; a device's
	// sampled traceparent is always followed. Default: 1.
	SampleRatio float64 `yaml:"sample_ratio"`
	// TLS to the collector (the same keys as backend.tls). Default: plaintext.
	TLS TLS `yaml:"tls"`
}

// Shutdown settings.
type Shutdown struct {
	// DrainTimeout bounds waiting for the window on the first signal. Default: 30s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// Default returns the configuration used when no file is given.
func Default() Config {
	var c Config
	c.ApplyDefaults()
	return c
}

// Bounds of the dead-letter topic (kafka.dlq_retention, dlq_retention_bytes).
const (
	DefaultDLQRetention      = 30 * 24 * time.Hour
	DefaultDLQRetentionBytes = 128 << 20
)

// TopicConfigs are the configs the bridge gives the topics it creates:
// the request topic keeps everything until it is processed (the embedded
// broker deletes what every group committed; on an external Kafka that is
// the operator's job), the dead-letter topic is bounded by age and size.
func (k Kafka) TopicConfigs() map[string]map[string]string {
	return map[string]map[string]string{
		k.Topic:    {"retention.ms": "-1", "retention.bytes": "-1"},
		k.DLQTopic: {"retention.ms": strconv.FormatInt(k.DLQRetention.Milliseconds(), 10), "retention.bytes": strconv.FormatInt(k.DLQRetentionBytes, 10)},
	}
}

// ApplyDefaults fills every zero field with its default.
func (c *Config) ApplyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defD := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defI := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	def(&c.MQTT.Broker, Embedded)
	def(&c.MQTT.EmbeddedListen, "127.0.0.1:1883")
	defD(&c.MQTT.EmbeddedMessageExpiry, embedded.DefaultMessageExpiry)
	def(&c.MQTT.ClientID, "edgebridge-1")
	c.MQTT.EmbeddedTLS.Names = splitNames(c.MQTT.EmbeddedTLS.Names)
	if len(c.MQTT.Subscribe) == 0 {
		c.MQTT.Subscribe = []string{"payment/request/+"}
	}
	def(&c.MQTT.ReplyTopic, "payment/response/{device_id}")
	defI(&c.MQTT.MaxPayload, 16<<10)
	if len(c.Kafka.Brokers) == 0 {
		c.Kafka.Brokers = []string{Embedded}
	}
	def(&c.Kafka.EmbeddedListen, "127.0.0.1:9092")
	def(&c.Kafka.DataDir, "./edgebridge-data")
	def(&c.Kafka.Topic, "edgebridge.payment.requests")
	def(&c.Kafka.DLQTopic, "edgebridge.payment.dlq")
	defD(&c.Kafka.DLQRetention, DefaultDLQRetention)
	if c.Kafka.DLQRetentionBytes == 0 {
		c.Kafka.DLQRetentionBytes = DefaultDLQRetentionBytes
	}
	def(&c.Kafka.GroupID, "edgebridge")
	defI(&c.Kafka.Partitions, 8)
	defD(&c.Kafka.CommitInterval, 200*time.Millisecond)
	defD(&c.Kafka.SessionTimeout, 6*time.Second)
	defD(&c.Kafka.HeartbeatInterval, c.Kafka.SessionTimeout/5)
	if c.Kafka.MinFreeBytes == 0 {
		c.Kafka.MinFreeBytes = 256 << 20
	}
	defD(&c.Kafka.DeleteCommittedAfter, time.Minute)
	defI(&c.Kafka.MaxMessageBytes, DefaultMaxMessageBytes)
	if c.Backend.Targets == nil && !c.Dapr.Enabled {
		c.Backend.Targets = []string{"127.0.0.1:7070"}
	}
	defI(&c.Backend.Window, 128)
	defI(&c.Backend.MaxAttempts, 5)
	defD(&c.Backend.RetryBackoff, time.Second)
	defD(&c.Backend.OpenTimeout, 10*time.Second)
	defD(&c.Backend.AckTimeout, 30*time.Second)
	defD(&c.Backend.ResolveInterval, 30*time.Second)
	r := &c.Backend.Reconnect
	defD(&r.Initial, time.Second)
	defD(&r.Max, 30*time.Second)
	if r.Jitter == 0 {
		r.Jitter = 0.2
	}
	defD(&r.ResetAfter, 30*time.Second)
	defI(&r.HealthCheckAfter, 2)
	h := &c.Backend.Heartbeat
	defD(&h.Interval, 5*time.Second)
	defD(&h.MinInterval, min(time.Second, h.Interval))
	defD(&h.Timeout, 3*h.Interval)
	defD(&h.MaxInterval, max(h.Interval, min(2*h.Interval, h.Timeout*2/3)))
	defD(&h.SlowRTT, 500*time.Millisecond)
	defD(&c.Backend.Keepalive.Time, 20*time.Second)
	defD(&c.Backend.Keepalive.Timeout, 10*time.Second)
	def(&c.Dapr.SocketFolder, os.Getenv(DaprSocketFolderEnv))
	def(&c.Dapr.SocketFolder, DefaultDaprSocketFolder)
	def(&c.Dapr.SocketName, "edgebridge")
	if c.Tracing.SampleRatio == 0 {
		c.Tracing.SampleRatio = 1
	}
	def(&c.Dapr.ReplyTopic, "payment.replies")
	defI(&c.Dapr.Window, 128)
	defI(&c.Dapr.MaxAttempts, 5)
	defD(&c.Dapr.RetryBackoff, time.Second)
	def(&c.Admin.Listen, "127.0.0.1:9464")
	def(&c.Log.Format, "text")
	def(&c.Log.Level, "info")
	defD(&c.Shutdown.DrainTimeout, 30*time.Second)
}

// EmbeddedMQTT reports whether the MQTT broker runs in-process.
func (c *Config) EmbeddedMQTT() bool { return c.MQTT.Broker == Embedded }

// EmbeddedKafka reports whether the Kafka broker runs in-process.
func (c *Config) EmbeddedKafka() bool {
	return len(c.Kafka.Brokers) == 1 && c.Kafka.Brokers[0] == Embedded
}

// Validate returns every problem in c as Problems; nil if there is none.
func (c *Config) Validate() error {
	if ps := c.problems(); len(ps) > 0 {
		return ps
	}
	return nil
}

func (c *Config) problems() Problems {
	var ps Problems
	bad := func(key, format string, args ...any) {
		ps = append(ps, Problem{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	addr := func(key, v string) {
		if _, _, err := net.SplitHostPort(v); err != nil {
			bad(key, "%q is not host:port", v)
		}
	}
	if !c.EmbeddedMQTT() {
		u, err := url.Parse(c.MQTT.Broker)
		if err != nil || (u.Scheme != "tcp" && u.Scheme != "mqtt" && u.Scheme != "ssl" && u.Scheme != "tls") || u.Host == "" {
			bad("mqtt.broker", "%q must be \"embedded\" or a URL like tcp://host:1883", redactedURL(c.MQTT.Broker))
		}
	}
	addr("mqtt.embedded_listen", c.MQTT.EmbeddedListen)
	checkTLS(bad, "mqtt.tls", c.MQTT.TLS)
	checkTLS(bad, "kafka.tls", c.Kafka.TLS)
	if sa := c.Kafka.SASL; sa != (SASL{}) {
		if _, err := kafkapipe.NewSASL(sa.Mechanism, sa.Username, sa.Password); err != nil {
			bad("kafka.sasl.mechanism", "%q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", sa.Mechanism)
		}
		if sa.Username == "" {
			bad("kafka.sasl.username", "required with kafka.sasl")
		}
		if sa.PasswordFile == "" {
			bad("kafka.sasl.password_file", "required with kafka.sasl")
		} else if _, err := sa.Password(); err != nil {
			bad("kafka.sasl.password_file", "%v", err)
		}
	}
	if e := c.Kafka.EmbeddedTLS; e != (EmbeddedKafkaTLS{}) {
		if !c.EmbeddedKafka() {
			bad("kafka.embedded_tls", "configures the embedded broker, but kafka.brokers is not [\"embedded\"]")
		} else if _, err := (tlsfiles.Files{CertFile: e.CertFile, KeyFile: e.KeyFile}).Server(); err != nil {
			bad("kafka.embedded_tls", "%v", err)
		}
		if !c.Kafka.TLS.Enabled {
			bad("kafka.tls", "the embedded broker serves TLS only: enable kafka.tls (ca_file: the CA of embedded_tls's certificate)")
		}
	}
	if c.EmbeddedMQTT() && !c.MQTT.EmbeddedAllowInsecure {
		// Secure by default: devices reach the site over TLS with a login.
		if l := c.MQTT.EmbeddedListen; !loopback(l) {
			bad("mqtt.embedded_listen", "%s takes devices from the network in clear text: serve them on mqtt.embedded_tls (8883, 8884) and keep embedded_listen on 127.0.0.1, or accept the risk with mqtt.embedded_allow_insecure: true", l)
		}
		if l := c.MQTT.EmbeddedTLS.Listen; l != "" && !loopback(l) && !c.MQTT.AuthEnabled() {
			bad("mqtt.embedded_tls.listen", "%s takes devices without a login: set mqtt.embedded_auth.password_file (edgebridge device add writes kafka.data_dir/site/passwd) or cert_listen, or accept the risk with mqtt.embedded_allow_insecure: true", l)
		}
	}
	if e := c.MQTT.EmbeddedTLS; e.configured() || c.MQTT.EmbeddedAuth.PasswordFile != "" {
		if !c.EmbeddedMQTT() {
			bad("mqtt.embedded_tls", "embedded_auth and embedded_tls configure the embedded broker, but mqtt.broker is not \"embedded\"")
		}
		if e.ClientCAFile != "" && e.Listen == "" {
			bad("mqtt.embedded_tls.client_ca_file", "client certificates need embedded_tls.listen")
		}
		if e.CertListen != "" {
			addr("mqtt.embedded_tls.cert_listen", e.CertListen)
			if e.Listen == "" {
				bad("mqtt.embedded_tls.cert_listen", "needs embedded_tls.listen (the password listener, and where the server certificate is set)")
			}
			if e.ClientCAFile == "" && e.CertFile != "" {
				bad("mqtt.embedded_tls.client_ca_file", "cert_listen with a certificate of your own needs the CA of the devices' certificates")
			}
		}
		if e.Listen != "" {
			addr("mqtt.embedded_tls.listen", e.Listen)
			switch {
			case (e.CertFile == "") != (e.KeyFile == ""):
				bad("mqtt.embedded_tls", "cert_file and key_file go together (neither: the site CA issues the certificate)")
			case e.CertFile == "" && len(e.Names) == 0:
				bad("mqtt.embedded_tls.names", "the site CA's certificate needs the names or addresses devices dial (no cert_file given)")
			case e.CertFile != "":
				if _, err := (tlsfiles.Files{CAFile: e.ClientCAFile, CertFile: e.CertFile, KeyFile: e.KeyFile}).Server(); err != nil {
					bad("mqtt.embedded_tls", "%v", err)
				}
			}
		}
	}
	if f := c.MQTT.EmbeddedAuth.PasswordFile; f != "" {
		// A file not there yet is a site with no device provisioned: every
		// login is refused until `edgebridge device add` writes it.
		if st, err := os.Stat(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			bad("mqtt.embedded_auth.password_file", "%v", err)
		} else if err == nil && st.IsDir() {
			bad("mqtt.embedded_auth.password_file", "%s is a directory", f)
		}
	}
	if c.MQTT.TLS.Enabled && c.EmbeddedMQTT() {
		bad("mqtt.tls", "the bridge reaches its embedded broker in-process; mqtt.embedded_tls is the devices' TLS listener")
	} else if u, err := url.Parse(c.MQTT.Broker); err == nil && c.MQTT.TLS.Enabled != (u.Scheme == "ssl" || u.Scheme == "tls") && !c.EmbeddedMQTT() {
		bad("mqtt.tls", "enabled is %v but the broker URL's scheme is %q (TLS needs ssl:// or tls://, and they need TLS enabled)", c.MQTT.TLS.Enabled, u.Scheme)
	}
	if c.MQTT.PasswordFile != "" {
		if c.MQTT.Username == "" {
			bad("mqtt.password_file", "a password needs mqtt.username")
		}
		if _, err := c.MQTT.Password(); err != nil {
			bad("mqtt.password_file", "%v", err)
		}
	}
	if u, err := url.Parse(c.MQTT.Broker); err == nil && u.User != nil {
		if _, hasPassword := u.User.Password(); hasPassword {
			bad("mqtt.broker", "holds a password: use mqtt.username and mqtt.password_file (the URL is logged)")
		}
	}
	if strings.ContainsAny(c.MQTT.ClientID, "+#/") {
		bad("mqtt.client_id", "%q must not contain + # /", c.MQTT.ClientID)
	}
	for _, f := range c.MQTT.Subscribe {
		if !strings.HasSuffix(f, "/+") && !strings.HasPrefix(f, "$share/") {
			bad("mqtt.subscribe", "%q must end in /+ (the last level is the device id)", f)
		}
	}
	if !strings.Contains(c.MQTT.ReplyTopic, "{device_id}") {
		bad("mqtt.reply_topic", "%q must contain {device_id}", c.MQTT.ReplyTopic)
	}
	if strings.ContainsAny(strings.ReplaceAll(c.MQTT.ReplyTopic, "{device_id}", ""), "+#") {
		bad("mqtt.reply_topic", "%q must not contain wildcards", c.MQTT.ReplyTopic)
	}
	if most := c.Kafka.MaxMessageBytes - kafkapipe.DeadLetterOverhead; c.MQTT.MaxPayload < 1 || c.MQTT.MaxPayload > most {
		bad("mqtt.max_payload", "%d must be between 1 and %d: kafka.max_message_bytes (%d) less %d bytes of dead-letter headers; raise both together",
			c.MQTT.MaxPayload, most, c.Kafka.MaxMessageBytes, kafkapipe.DeadLetterOverhead)
	}
	if !c.EmbeddedKafka() {
		for _, b := range c.Kafka.Brokers {
			if b == Embedded {
				bad("kafka.brokers", "\"embedded\" cannot be mixed with other brokers")
				continue
			}
			addr("kafka.brokers", b)
		}
	}
	addr("kafka.embedded_listen", c.Kafka.EmbeddedListen)
	for key, t := range map[string]string{"kafka.topic": c.Kafka.Topic, "kafka.dlq_topic": c.Kafka.DLQTopic} {
		if !kafkapipe.ValidTopic(t) {
			bad(key, "%q is not a valid Kafka topic name", t)
		}
	}
	if c.Kafka.Topic == c.Kafka.DLQTopic {
		bad("kafka.dlq_topic", "must differ from kafka.topic")
	}
	if c.Kafka.Partitions < 1 || c.Kafka.Partitions > 1024 {
		bad("kafka.partitions", "%d must be between 1 and 1024", c.Kafka.Partitions)
	}
	if c.Kafka.BatchTimeout < 0 {
		bad("kafka.batch_timeout", "must not be negative")
	}
	if r := c.Kafka.DLQRetention; r < 0 || (r > 0 && r < time.Minute) {
		bad("kafka.dlq_retention", "%s must be at least 1m", r)
	}
	if b := c.Kafka.DLQRetentionBytes; b < 0 || (b > 0 && b < 1<<20) {
		bad("kafka.dlq_retention_bytes", "%d must be at least 1 MiB (1048576)", b)
	}
	if e := c.MQTT.EmbeddedMessageExpiry; e != 0 && e < time.Second {
		bad("mqtt.embedded_message_expiry", "%s must be at least 1s", e)
	}
	if t := c.Kafka.SessionTimeout; t != 0 && (t < time.Second || t > 5*time.Minute) {
		bad("kafka.session_timeout", "%s must be between 1s and 5m", t)
	} else if t != 0 && t < 6*time.Second && c.EmbeddedKafka() {
		bad("kafka.session_timeout", "%s: the embedded broker refuses less than 6s (group.min.session.timeout.ms)", t)
	}
	if h := c.Kafka.HeartbeatInterval; h < 0 || (h > 0 && c.Kafka.SessionTimeout > 0 && h > c.Kafka.SessionTimeout/3) {
		bad("kafka.heartbeat_interval", "%s must be positive and at most a third of kafka.session_timeout (%s)", h, c.Kafka.SessionTimeout)
	}
	if c.Kafka.CommitInterval < 0 {
		bad("kafka.commit_interval", "must not be negative")
	}
	if m := c.Kafka.MaxMessageBytes; m < 64<<10 || m > 100<<20 {
		bad("kafka.max_message_bytes", "%d must be between 65536 and 104857600", m)
	}
	if len(c.Backend.Targets) == 0 && !c.Dapr.Enabled {
		bad("backend.targets", "at least one target is needed unless dapr.enabled")
	}
	for _, t := range c.Backend.Targets {
		if t == "" {
			bad("backend.targets", "empty target")
		}
	}
	if c.Backend.Window < 1 || c.Backend.Window > 65536 {
		bad("backend.window", "%d must be between 1 and 65536", c.Backend.Window)
	}
	if c.Backend.MaxAttempts < 1 {
		bad("backend.max_attempts", "%d must be at least 1", c.Backend.MaxAttempts)
	}
	if c.Backend.RetryBackoff < 0 {
		bad("backend.retry_backoff", "must not be negative")
	}
	for key, d := range map[string]time.Duration{
		"backend.open_timeout": c.Backend.OpenTimeout, "backend.ack_timeout": c.Backend.AckTimeout,
		"backend.resolve_interval": c.Backend.ResolveInterval, "backend.reconnect.reset_after": c.Backend.Reconnect.ResetAfter,
		"backend.keepalive.timeout": c.Backend.Keepalive.Timeout, "backend.heartbeat.slow_rtt": c.Backend.Heartbeat.SlowRTT,
		"backend.max_request_age": c.Backend.MaxRequestAge,
	} {
		if d < 0 {
			bad(key, "must not be negative")
		}
	}
	if r := c.Backend.Reconnect; r.Initial <= 0 || r.Max < r.Initial {
		bad("backend.reconnect.max", "%s must be at least reconnect.initial %s (and both positive)", r.Max, r.Initial)
	}
	if j := c.Backend.Reconnect.Jitter; j < 0 || j >= 1 {
		bad("backend.reconnect.jitter", "%g must be in [0, 1)", j)
	}
	if h := c.Backend.Heartbeat; h.MinInterval <= 0 || h.MinInterval > h.Interval || h.Interval > h.MaxInterval {
		bad("backend.heartbeat", "intervals must satisfy 0 < min_interval %s <= interval %s <= max_interval %s", h.MinInterval, h.Interval, h.MaxInterval)
	}
	if h := c.Backend.Heartbeat; h.Timeout <= h.MaxInterval {
		bad("backend.heartbeat.timeout", "%s must exceed max_interval %s", h.Timeout, h.MaxInterval)
	}
	if c.Backend.Keepalive.Time < 10*time.Second {
		bad("backend.keepalive.time", "%s must be at least 10s (gRPC's floor; backends enforce it)", c.Backend.Keepalive.Time)
	}
	checkTLS(bad, "backend.tls", c.Backend.TLS)
	if c.Backend.TokenFile != "" {
		if !c.Backend.TLS.Enabled {
			bad("backend.token_file", "a token requires backend.tls.enabled")
		}
		if _, err := c.Backend.Token(); err != nil {
			bad("backend.token_file", "%v", err)
		}
	}
	if c.Dapr.Enabled {
		c.validateDapr(bad)
	}
	addr("admin.listen", c.Admin.Listen)
	if c.Tracing.Endpoint != "" {
		addr("tracing.endpoint", c.Tracing.Endpoint)
	}
	if r := c.Tracing.SampleRatio; r < 0 || r > 1 {
		bad("tracing.sample_ratio", "%v must be above 0 and at most 1", r)
	}
	checkTLS(bad, "tracing.tls", c.Tracing.TLS)
	if c.Shutdown.DrainTimeout < 0 {
		bad("shutdown.drain_timeout", "must not be negative")
	}
	if f := c.Log.Format; f != "text" && f != "json" {
		bad("log.format", "%q must be text or json", f)
	}
	if l := c.Log.Level; l != "debug" && l != "info" && l != "warn" && l != "error" {
		bad("log.level", "%q must be debug, info, warn or error", l)
	}
	return ps
}

// maxSocketPath is the longest path a Unix socket can have on Linux
// (sun_path is 108 bytes including the terminating NUL).
const maxSocketPath = 107

func (c *Config) validateDapr(bad func(key, format string, args ...any)) {
	d := c.Dapr
	if !filepath.IsAbs(d.SocketFolder) {
		bad("dapr.socket_folder", "%q must be an absolute path", d.SocketFolder)
	}
	if d.SocketName == "" || strings.ContainsAny(d.SocketName, "/\\\x00") || d.SocketName == "." || d.SocketName == ".." {
		bad("dapr.socket_name", "%q must be a plain file name", d.SocketName)
	}
	if p := d.SocketPath(); len(p) > maxSocketPath {
		bad("dapr.socket_folder", "socket path %q is %d bytes; Unix sockets allow %d", p, len(p), maxSocketPath)
	}
	if !kafkapipe.ValidTopic(d.ReplyTopic) {
		bad("dapr.reply_topic", "%q is not a valid topic name", d.ReplyTopic)
	}
	if d.ReplyTopic == c.Kafka.Topic || d.ReplyTopic == c.Kafka.DLQTopic {
		bad("dapr.reply_topic", "%q must differ from kafka.topic and kafka.dlq_topic", d.ReplyTopic)
	}
	for _, f := range d.BindingTopics {
		if f == "" || strings.HasPrefix(f, "$") || strings.Contains(f, "{") {
			bad("dapr.binding_topics", "%q is not an MQTT topic filter", f)
		}
		for _, sub := range c.MQTT.Subscribe {
			if device := strings.TrimSuffix(sub, "+") + "any-device"; mqttin.FilterMatches(f, device) {
				bad("dapr.binding_topics", "%q covers the device request topic %s: Dapr apps could pay as any device", f, device)
			}
		}
	}
	if d.Window < 1 || d.Window > 65536 {
		bad("dapr.window", "%d must be between 1 and 65536", d.Window)
	}
	if d.MaxAttempts < 1 {
		bad("dapr.max_attempts", "%d must be at least 1", d.MaxAttempts)
	}
	if d.RetryBackoff < 0 {
		bad("dapr.retry_backoff", "must not be negative")
	}
}

// Config loads the TLS files; nil when TLS is off. The files are read
// again when they change (rotation needs no restart).
func (t TLS) Config() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	return tlsfiles.Files{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, ServerName: t.ServerName}.Client()
}

// redactedURL is u without a password, for messages.
func redactedURL(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	if at := strings.LastIndexByte(u, '@'); at >= 0 {
		return "…" + u[at:]
	}
	return u
}

// checkTLS reports inconsistent TLS settings under key.
func checkTLS(bad func(key, format string, args ...any), key string, t TLS) {
	if !t.Enabled && (t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "") {
		bad(key, "files or server_name are set but enabled is false")
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		bad(key, "cert_file and key_file go together")
	}
	if t.Enabled {
		if _, err := t.Config(); err != nil {
			bad(key, "%v", err)
		}
	}
}

// Password reads mqtt.password_file: the whole file less one trailing
// newline. "" when there is no password file.
func (m MQTT) Password() (string, error) { return readSecret(m.PasswordFile) }

// readSecret reads a secret file: all of it less one trailing newline.
// "" when path is "".
func readSecret(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r")
	if pw == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return pw, nil
}

// Token reads the bearer token; "" when there is no token file.
func (b Backend) Token() (string, error) {
	if b.TokenFile == "" {
		return "", nil
	}
	raw, err := os.ReadFile(b.TokenFile)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", b.TokenFile)
	}
	return tok, nil
}

// Parse decodes YAML, expands ${VAR} and ${VAR:-default} in values,
// applies defaults and validates. Unknown keys (with a guess at the key
// meant), values of the wrong type and invalid settings are all reported
// together, as Problems with their lines; only a YAML syntax error stops
// the reading early.
func Parse(b []byte) (Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	var c Config
	ps := expandEnv(&doc)
	if len(doc.Content) > 0 { // an empty file: all defaults
		ps = append(ps, unknownKeys(doc.Content[0], reflect.TypeFor[Config](), "")...)
		if err := doc.Decode(&c); err != nil {
			var te *yaml.TypeError
			if !errors.As(err, &te) {
				return Config{}, fmt.Errorf("config: %w", err)
			}
			ps = append(ps, typeProblems(&doc, te)...)
		}
	}
	c.ApplyDefaults()
	for _, p := range c.problems() {
		p.Line = lineOf(&doc, p.Key)
		ps = append(ps, p)
	}
	if len(ps) > 0 {
		return Config{}, fmt.Errorf("config: invalid, %d problem(s):\n%w", len(ps), ps.sorted())
	}
	return c, nil
}

// Load reads and parses the file at path.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return Parse(b)
}
