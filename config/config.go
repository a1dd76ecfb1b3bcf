// Package config loads and validates edgebridge's YAML configuration.
// Unknown keys are errors; Validate lists every problem at once.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Embedded is the broker value that selects an in-process broker.
const Embedded = "embedded"

// Config is the whole file. Zero values mean the documented default.
type Config struct {
	MQTT     MQTT     `yaml:"mqtt"`
	Kafka    Kafka    `yaml:"kafka"`
	Backend  Backend  `yaml:"backend"`
	Admin    Admin    `yaml:"admin"`
	Shutdown Shutdown `yaml:"shutdown"`
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
	// MaxPayload in bytes. Default: 16384.
	MaxPayload int `yaml:"max_payload"`
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
	// GroupID of the consumer group. Default: edgebridge.
	GroupID string `yaml:"group_id"`
	// Partitions of topics the bridge creates. Default: 8.
	Partitions int `yaml:"partitions"`
	// BatchTimeout of the producer. Default: 1ms.
	BatchTimeout time.Duration `yaml:"batch_timeout"`
	// CommitInterval of the consumer. Default: 200ms.
	CommitInterval time.Duration `yaml:"commit_interval"`
}

// Backend settings.
type Backend struct {
	// Targets are gRPC addresses of backends. Default: ["127.0.0.1:7070"].
	Targets []string `yaml:"targets"`
	// Window is the most un-ACKed deliveries per stream. Default: 128.
	Window int `yaml:"window"`
	// MaxAttempts for a delivery answered RETRY before it is dead-lettered. Default: 5.
	MaxAttempts int `yaml:"max_attempts"`
	// RetryBackoff is the first delay before redelivering a RETRY; it doubles. Default: 1s.
	RetryBackoff time.Duration `yaml:"retry_backoff"`
	// ReconnectInitial is the first reconnect delay; it doubles. Default: 1s.
	ReconnectInitial time.Duration `yaml:"reconnect_initial"`
	// ReconnectMax caps the reconnect delay. Default: 30s.
	ReconnectMax time.Duration `yaml:"reconnect_max"`
	// HeartbeatInterval between pings. Default: 5s.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// HeartbeatTimeout: a stream silent this long is replaced. Default: 15s.
	HeartbeatTimeout time.Duration `yaml:"heartbeat_timeout"`
}

// Admin settings.
type Admin struct {
	// Listen address of /metrics, /healthz, /readyz. Default: 127.0.0.1:9464.
	Listen string `yaml:"listen"`
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
	def(&c.MQTT.ClientID, "edgebridge-1")
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
	def(&c.Kafka.GroupID, "edgebridge")
	defI(&c.Kafka.Partitions, 8)
	defD(&c.Kafka.BatchTimeout, time.Millisecond)
	defD(&c.Kafka.CommitInterval, 200*time.Millisecond)
	if len(c.Backend.Targets) == 0 {
		c.Backend.Targets = []string{"127.0.0.1:7070"}
	}
	defI(&c.Backend.Window, 128)
	defI(&c.Backend.MaxAttempts, 5)
	defD(&c.Backend.RetryBackoff, time.Second)
	defD(&c.Backend.ReconnectInitial, time.Second)
	defD(&c.Backend.ReconnectMax, 30*time.Second)
	defD(&c.Backend.HeartbeatInterval, 5*time.Second)
	defD(&c.Backend.HeartbeatTimeout, 3*c.Backend.HeartbeatInterval)
	def(&c.Admin.Listen, "127.0.0.1:9464")
	defD(&c.Shutdown.DrainTimeout, 30*time.Second)
}

// EmbeddedMQTT reports whether the MQTT broker runs in-process.
func (c *Config) EmbeddedMQTT() bool { return c.MQTT.Broker == Embedded }

// EmbeddedKafka reports whether the Kafka broker runs in-process.
func (c *Config) EmbeddedKafka() bool {
	return len(c.Kafka.Brokers) == 1 && c.Kafka.Brokers[0] == Embedded
}

// Validate returns every problem in c, joined; nil if there is none.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	addr := func(key, v string) {
		if _, _, err := net.SplitHostPort(v); err != nil {
			bad(key, "%q is not host:port", v)
		}
	}
	if !c.EmbeddedMQTT() {
		u, err := url.Parse(c.MQTT.Broker)
		if err != nil || (u.Scheme != "tcp" && u.Scheme != "mqtt" && u.Scheme != "ssl" && u.Scheme != "tls") || u.Host == "" {
			bad("mqtt.broker", "%q must be \"embedded\" or a URL like tcp://host:1883", c.MQTT.Broker)
		}
	}
	addr("mqtt.embedded_listen", c.MQTT.EmbeddedListen)
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
	if c.MQTT.MaxPayload < 0 || c.MQTT.MaxPayload > 1<<20 {
		bad("mqtt.max_payload", "%d must be between 1 and 1048576", c.MQTT.MaxPayload)
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
		if !validTopic(t) {
			bad(key, "%q is not a valid Kafka topic name", t)
		}
	}
	if c.Kafka.Topic == c.Kafka.DLQTopic {
		bad("kafka.dlq_topic", "must differ from kafka.topic")
	}
	if c.Kafka.Partitions < 1 || c.Kafka.Partitions > 1024 {
		bad("kafka.partitions", "%d must be between 1 and 1024", c.Kafka.Partitions)
	}
	if c.Kafka.BatchTimeout < 0 || c.Kafka.CommitInterval < 0 {
		bad("kafka", "durations must not be negative")
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
	if c.Backend.HeartbeatTimeout <= c.Backend.HeartbeatInterval {
		bad("backend.heartbeat_timeout", "%s must exceed heartbeat_interval %s", c.Backend.HeartbeatTimeout, c.Backend.HeartbeatInterval)
	}
	if c.Backend.ReconnectMax < c.Backend.ReconnectInitial {
		bad("backend.reconnect_max", "%s must be at least reconnect_initial %s", c.Backend.ReconnectMax, c.Backend.ReconnectInitial)
	}
	if c.Backend.RetryBackoff < 0 {
		bad("backend.retry_backoff", "must not be negative")
	}
	addr("admin.listen", c.Admin.Listen)
	if c.Shutdown.DrainTimeout < 0 {
		bad("shutdown.drain_timeout", "must not be negative")
	}
	return errors.Join(errs...)
}

func validTopic(t string) bool {
	if t == "" || len(t) > 249 || t == "." || t == ".." {
		return false
	}
	for _, r := range t {
		if !(r == '.' || r == '_' || r == '-' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

// Parse decodes YAML, rejecting unknown keys, then applies defaults and
// validates. The error lists every problem.
func Parse(b []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) { // empty file: all defaults
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config: invalid:\n%w", err)
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
