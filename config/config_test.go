package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseDefaults(t *testing.T) {
	c, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !c.EmbeddedMQTT() || !c.EmbeddedKafka() {
		t.Fatal("empty config must use embedded brokers")
	}
	if c.Backend.Window != 128 || c.Backend.Targets[0] != "127.0.0.1:7070" || c.Admin.Listen != "127.0.0.1:9464" {
		t.Fatalf("got %+v", c)
	}
	if c.Backend.Heartbeat.Timeout != 15*time.Second {
		t.Fatalf("got heartbeat timeout %s, want 15s", c.Backend.Heartbeat.Timeout)
	}
}

func TestParseContract(t *testing.T) {
	doc := `
mqtt:
  broker: tcp://127.0.0.1:1883
  embedded_listen: 127.0.0.1:1883
  client_id: edgebridge-1
  subscribe: ["payment/request/+"]
  reply_topic: "payment/response/{device_id}"
kafka:
  brokers: ["127.0.0.1:9092"]
  embedded_listen: 127.0.0.1:9092
  data_dir: ./edgebridge-data
  topic: edgebridge.payment.requests
  dlq_topic: edgebridge.payment.dlq
  group_id: edgebridge
backend:
  targets: ["127.0.0.1:7070"]
  window: 64
admin:
  listen: 127.0.0.1:9464
`
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if c.EmbeddedMQTT() || c.EmbeddedKafka() || c.Backend.Window != 64 {
		t.Fatalf("got %+v", c)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // every one must appear
	}{
		{name: "unknown key", doc: "mqtt:\n  brokr: x\n", want: []string{"brokr"}},
		{name: "every problem listed", doc: `
mqtt:
  broker: "http//nope"
  reply_topic: "payment/response"
kafka:
  topic: "bad topic!"
  partitions: -1
backend:
  window: 0
  max_attempts: -2
  heartbeat:
    interval: 10s
    timeout: 5s
  reconnect:
    initial: 5s
    max: 1s
    jitter: 1.5
  keepalive:
    time: 1s
  tls:
    enabled: true
    ca_file: /nonexistent/ca.pem
    cert_file: /nonexistent/cert.pem
  token_file: /nonexistent/token
admin:
  listen: nowhere
`, want: []string{"mqtt.broker", "mqtt.reply_topic", "kafka.topic", "kafka.partitions", "backend.max_attempts",
			"backend.heartbeat.timeout", "backend.reconnect.max", "backend.reconnect.jitter", "backend.keepalive.time",
			"cert_file and key_file go together", "/nonexistent/ca.pem", "backend.token_file", "admin.listen"}},
		{name: "token needs tls", doc: "backend:\n  token_file: /etc/hostname\n", want: []string{"a token requires backend.tls.enabled"}},
		{name: "heartbeat out of order", doc: "backend:\n  heartbeat: {interval: 5s, max_interval: 4s}\n",
			want: []string{"backend.heartbeat: intervals must satisfy 0 < min_interval 1s <= interval 5s <= max_interval 4s"}},
		{name: "heartbeat timeout below max", doc: "backend:\n  heartbeat: {interval: 5s, max_interval: 8s, timeout: 8s}\n",
			want: []string{"backend.heartbeat.timeout: 8s must exceed max_interval 8s"}},
		{name: "tls settings without tls", doc: "backend:\n  tls:\n    server_name: x\n", want: []string{"enabled is false"}},
		{name: "no targets without dapr", doc: "backend:\n  targets: []\n", want: []string{"backend.targets: at least one target"}},
		{name: "dapr problems", doc: `
dapr:
  enabled: true
  socket_folder: relative/dir
  socket_name: "a/b"
  reply_topic: edgebridge.payment.requests
  window: -3
  max_attempts: -1
  retry_backoff: -1s
`, want: []string{"dapr.socket_folder", "dapr.socket_name", "dapr.reply_topic", "dapr.window", "dapr.max_attempts", "dapr.retry_backoff"}},
		{name: "dapr socket path too long", doc: "dapr:\n  enabled: true\n  socket_folder: /" + strings.Repeat("x", 120) + "\n",
			want: []string{"Unix sockets allow 107"}},
		{name: "subscribe must end in device level", doc: "mqtt:\n  subscribe: [\"payment/#\"]\n", want: []string{"mqtt.subscribe"}},
		// A dead letter of a payload within max_payload must fit Kafka's limit.
		{name: "max_payload at the Kafka limit", doc: "mqtt:\n  max_payload: 1048576\n", want: []string{"mqtt.max_payload: 1048576 must be between 1 and 1040384", "raise both together"}},
		{name: "max_payload over a lowered Kafka limit", doc: "mqtt:\n  max_payload: 100000\nkafka:\n  max_message_bytes: 100000\n",
			want: []string{"mqtt.max_payload: 100000 must be between 1 and 91808"}},
		{name: "negative max_payload", doc: "mqtt:\n  max_payload: -1\n", want: []string{"mqtt.max_payload"}},
		{name: "max_message_bytes too small", doc: "kafka:\n  max_message_bytes: 1000\n", want: []string{"kafka.max_message_bytes"}},
		{name: "mqtt tls needs ssl://", doc: "mqtt:\n  broker: tcp://h:1883\n  tls: {enabled: true}\n", want: []string{`mqtt.tls: enabled is true but the broker URL's scheme is "tcp"`}},
		{name: "ssl:// needs mqtt tls", doc: "mqtt:\n  broker: ssl://h:8883\n", want: []string{`mqtt.tls: enabled is false but the broker URL's scheme is "ssl"`}},
		{name: "mqtt tls on the embedded broker", doc: "mqtt:\n  tls: {enabled: true}\n", want: []string{"mqtt.tls: the bridge reaches its embedded broker in-process"}},
		{name: "mqtt password without username", doc: "mqtt:\n  broker: tcp://h:1883\n  password_file: /nonexistent/pw\n",
			want: []string{"mqtt.password_file: a password needs mqtt.username"}},
		{name: "mqtt password file unreadable", doc: "mqtt:\n  broker: tcp://h:1883\n  username: edgebridge\n  password_file: /\n",
			want: []string{"mqtt.password_file: read /: is a directory"}},
		{name: "a bad broker URL is shown without its password", doc: "mqtt:\n  broker: htp://u:hunter2@h:1883\n", want: []string{`mqtt.broker: "htp://u:xxxxx@h:1883" must be`}},
		{name: "password in the broker URL", doc: "mqtt:\n  broker: tcp://u:secret@h:1883\n", want: []string{"mqtt.broker: holds a password"}},
		{name: "mqtt tls files", doc: "mqtt:\n  broker: ssl://h:8883\n  tls: {enabled: true, ca_file: /nonexistent/ca.pem, cert_file: c.pem}\n",
			want: []string{"mqtt.tls: cert_file and key_file go together", "/nonexistent/ca.pem"}},
		{name: "embedded security on an external broker", doc: "mqtt:\n  broker: tcp://h:1883\n  embedded_auth: {password_file: /etc/hostname}\n",
			want: []string{`mqtt.embedded_tls: embedded_auth and embedded_tls configure the embedded broker`}},
		{name: "embedded security files", doc: "mqtt:\n  embedded_auth: {password_file: /}\n  embedded_tls: {client_ca_file: /nonexistent/ca.pem}\n",
			want: []string{"mqtt.embedded_auth.password_file: / is a directory", "client certificates need embedded_tls.listen"}},
		{name: "embedded tls without a certificate or names", doc: "mqtt:\n  embedded_tls: {listen: 127.0.0.1:8883}\n",
			want: []string{"mqtt.embedded_tls.names: the site CA's certificate needs the names or addresses devices dial"}},
		{name: "plain device listener on the network", doc: "mqtt:\n  embedded_listen: 0.0.0.0:1883\n  embedded_auth: {password_file: /nonexistent-yet/passwd}\n",
			want: []string{"mqtt.embedded_listen: 0.0.0.0:1883 takes devices from the network in clear text", "mqtt.embedded_allow_insecure: true"}},
		{name: "every address is the network", doc: "mqtt:\n  embedded_listen: \":1883\"\n", want: []string{`mqtt.embedded_listen: :1883 takes devices from the network`}},
		{name: "tls listener without a login", doc: "mqtt:\n  embedded_tls: {listen: \"[::]:8883\", names: [192.0.2.1]}\n",
			want: []string{"mqtt.embedded_tls.listen: [::]:8883 takes devices without a login"}},
		{name: "embedded tls with half a key pair", doc: "mqtt:\n  embedded_tls: {listen: 127.0.0.1:8883, cert_file: /nonexistent/c.pem}\n",
			want: []string{"mqtt.embedded_tls: cert_file and key_file go together"}},
		{name: "binding topics covering requests", doc: "dapr:\n  enabled: true\n  binding_topics: [\"#\", \"payment/+/+\", \"device/+/command\", \"$SYS/x\"]\n",
			want: []string{`dapr.binding_topics: "#" covers the device request topic payment/request/any-device`, `"payment/+/+" covers`, `"$SYS/x" is not an MQTT topic filter`}},
		{name: "kafka sasl", doc: "kafka:\n  brokers: [\"h:9092\"]\n  sasl: {mechanism: SCRAM-SHA-1}\n",
			want: []string{`kafka.sasl.mechanism: "SCRAM-SHA-1": want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512`, "kafka.sasl.username: required", "kafka.sasl.password_file: required"}},
		{name: "kafka embedded tls", doc: "kafka:\n  brokers: [\"h:9092\"]\n  embedded_tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}\n",
			want: []string{"kafka.embedded_tls: configures the embedded broker", "kafka.tls: the embedded broker serves TLS only"}},
		{name: "log settings", doc: "log:\n  format: xml\n  level: loud\n", want: []string{
			`line 2: log.format: "xml" must be text or json`, `line 3: log.level: "loud" must be debug, info, warn or error`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatal("got nil error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

// Raising the Kafka limit lets max_payload grow with it.
func TestMaxPayloadFollowsKafkaLimit(t *testing.T) {
	c, err := Parse([]byte("mqtt:\n  max_payload: 2000000\nkafka:\n  max_message_bytes: 2097152\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.MaxPayload != 2000000 || c.Kafka.MaxMessageBytes != 2097152 {
		t.Fatalf("got max_payload %d, max_message_bytes %d", c.MQTT.MaxPayload, c.Kafka.MaxMessageBytes)
	}
	if d := Default(); d.Log.Format != "text" || d.Log.Level != "info" {
		t.Fatalf("log defaults: %+v, want text, info", d.Log)
	}
	if d := Default(); d.Kafka.MaxMessageBytes != 1<<20 || d.MQTT.MaxPayload != 16<<10 {
		t.Fatalf("defaults: max_message_bytes %d, max_payload %d", d.Kafka.MaxMessageBytes, d.MQTT.MaxPayload)
	}
}

// TestParseDapr: with dapr.enabled the backends are optional (Dapr apps
// may be the only consumers) and the socket folder follows daprd's variable.
func TestParseDapr(t *testing.T) {
	t.Setenv(DaprSocketFolderEnv, "/run/dapr-sockets")
	c, err := Parse([]byte("dapr:\n  enabled: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Backend.Targets) != 0 {
		t.Errorf("got targets %v, want none with dapr enabled", c.Backend.Targets)
	}
	if got := c.Dapr.SocketPath(); got != "/run/dapr-sockets/edgebridge.sock" {
		t.Errorf("got socket %s, want /run/dapr-sockets/edgebridge.sock", got)
	}
	if c.Dapr.ReplyTopic != "payment.replies" || c.Dapr.Window != 128 || c.Dapr.MaxAttempts != 5 {
		t.Errorf("got dapr defaults %+v", c.Dapr)
	}
	t.Setenv(DaprSocketFolderEnv, "")
	c, err = Parse([]byte("dapr:\n  enabled: true\nbackend:\n  targets: [\"10.0.0.5:7070\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Dapr.SocketFolder != DefaultDaprSocketFolder || len(c.Backend.Targets) != 1 {
		t.Errorf("got folder %s targets %v", c.Dapr.SocketFolder, c.Backend.Targets)
	}
}

// kafka.batch_timeout is the ingest linger: 0 unless set (a config written
// for the old 1ms producer timeout still loads and keeps its value), and
// admin.pprof is off unless set.
func TestBatchTimeoutAndPprof(t *testing.T) {
	c, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Kafka.BatchTimeout != 0 || c.Admin.Pprof {
		t.Fatalf("defaults: batch_timeout %s, pprof %v; want 0, false", c.Kafka.BatchTimeout, c.Admin.Pprof)
	}
	c, err = Parse([]byte("kafka:\n  batch_timeout: 1ms\nadmin:\n  pprof: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kafka.BatchTimeout != time.Millisecond || !c.Admin.Pprof {
		t.Fatalf("got batch_timeout %s, pprof %v", c.Kafka.BatchTimeout, c.Admin.Pprof)
	}
}

// One typo and six bad values: seven findings, each with its line, the
// typo with the key meant, type errors and semantic problems together.
func TestParseReportsEveryProblemWithItsLine(t *testing.T) {
	doc := `mqtt:
  brokr: tcp://127.0.0.1:1883
  max_payload: 2000000
kafka:
  partitions: -3
  commit_interval: -1s
backend:
  window: lots
  max_attempts: -2
admin:
  listen: nowhere
`
	_, err := Parse([]byte(doc))
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("got %v, want Problems", err)
	}
	want := []string{
		`line 2: mqtt.brokr: unknown key; did you mean "broker"?`,
		"line 3: mqtt.max_payload: 2000000 must be between 1 and 1040384",
		"line 5: kafka.partitions: -3 must be between 1 and 1024",
		"line 6: kafka.commit_interval: must not be negative",
		"line 8: backend.window: cannot unmarshal !!str `lots` into int",
		"line 9: backend.max_attempts: -2 must be at least 1",
		`line 11: admin.listen: "nowhere" is not host:port`,
	}
	if len(ps) != len(want) {
		t.Fatalf("got %d findings, want %d:\n%v", len(ps), len(want), err)
	}
	for i, w := range want {
		if got := ps[i].String(); !strings.HasPrefix(got, w) {
			t.Errorf("finding %d: got %q, want %q…", i+1, got, w)
		}
	}
}

// ${VAR} and ${VAR:-default} in values come from the environment, typed
// by what they expand to; an unset variable without default is a problem
// that names it; keys, quoted values and $${…} stay as written.
func TestParseExpandsEnvironment(t *testing.T) {
	t.Setenv("EB_MQTT", "tcp://10.0.0.9:1883")
	t.Setenv("EB_WINDOW", "64")
	t.Setenv("EB_EMPTY", "")
	c, err := Parse([]byte(`# comments may say ${ANYTHING}
mqtt:
  broker: ${EB_MQTT}
  client_id: "${EB_CLIENT:-bridge-7}"
  reply_topic: "payment/$${x}/{device_id}"
kafka:
  brokers: ["${EB_KAFKA:-10.0.0.8:9092}"]
  group_id: ${EB_EMPTY:-edge}
backend:
  window: ${EB_WINDOW}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.Broker != "tcp://10.0.0.9:1883" || c.MQTT.ClientID != "bridge-7" || c.Kafka.Brokers[0] != "10.0.0.8:9092" ||
		c.Kafka.GroupID != "edge" || c.Backend.Window != 64 || c.MQTT.ReplyTopic != "payment/${x}/{device_id}" {
		t.Fatalf("got mqtt %+v, kafka %v/%s, window %d", c.MQTT, c.Kafka.Brokers, c.Kafka.GroupID, c.Backend.Window)
	}
	_, err = Parse([]byte("mqtt:\n  client_id: bridge\n  broker: ${EB_UNSET_BROKER}\n"))
	if err == nil || !strings.Contains(err.Error(), "line 3: environment variable EB_UNSET_BROKER is not set") {
		t.Fatalf("got %v, want the unset variable named with its line", err)
	}
}

// The names of the site CA's certificate may come from environment
// variables: an entry holds several, comma-separated, and an empty one
// (a variable not set on this node) is dropped.
func TestNamesFromEnvironment(t *testing.T) {
	t.Setenv("EB_NAMES", "192.0.2.7, pay.site.example")
	t.Setenv("EB_NODE_IP", "")
	c, err := Parse([]byte("mqtt:\n  embedded_tls:\n    listen: 127.0.0.1:8883\n    names: [\"${EB_NAMES}\", \"${EB_NODE_IP:-}\", localhost]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"192.0.2.7", "pay.site.example", "localhost"}; !slices.Equal(c.MQTT.EmbeddedTLS.Names, want) {
		t.Fatalf("names %q, want %q", c.MQTT.EmbeddedTLS.Names, want)
	}
	_, err = Parse([]byte("mqtt:\n  embedded_tls:\n    listen: 127.0.0.1:8883\n    names: [\"${EB_NODE_IP:-}\"]\n"))
	if err == nil || !strings.Contains(err.Error(), "mqtt.embedded_tls.names: the site CA's certificate needs the names") {
		t.Fatalf("got %v, want names required", err)
	}
}

// The settings issue 17 and 18 added: a session timeout the embedded
// broker would refuse, a sample ratio outside (0, 1] and a tracing
// endpoint that is not host:port are each a problem; the defaults are 6s,
// 256 MiB and tracing off at ratio 1.
func TestOperateAndRecoverySettings(t *testing.T) {
	c, err := Parse([]byte("kafka:\n  brokers: [embedded]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kafka.SessionTimeout != 6*time.Second || c.Kafka.HeartbeatInterval != 1200*time.Millisecond || c.Kafka.MinFreeBytes != 256<<20 ||
		c.Kafka.DeleteCommittedAfter != time.Minute || c.Tracing.Endpoint != "" || c.Tracing.SampleRatio != 1 {
		t.Fatalf("defaults: session %s, heartbeat %s, min free %d, delete committed after %s, tracing %q at %v", c.Kafka.SessionTimeout,
			c.Kafka.HeartbeatInterval, c.Kafka.MinFreeBytes, c.Kafka.DeleteCommittedAfter, c.Tracing.Endpoint, c.Tracing.SampleRatio)
	}
	_, err = Parse([]byte("kafka:\n  brokers: [embedded]\n  session_timeout: 3s\n  heartbeat_interval: 2s\ntracing:\n  endpoint: collector\n  sample_ratio: 1.5\n"))
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("got %v, want Problems", err)
	}
	want := []string{
		"line 3: kafka.session_timeout: 3s: the embedded broker refuses less than 6s",
		"line 4: kafka.heartbeat_interval: 2s must be positive and at most a third of kafka.session_timeout (3s)",
		`line 6: tracing.endpoint: "collector" is not host:port`,
		"line 7: tracing.sample_ratio: 1.5 must be above 0 and at most 1",
	}
	if len(ps) != len(want) {
		t.Fatalf("got %d findings, want %d:\n%v", len(ps), len(want), err)
	}
	for i, w := range want {
		if got := ps[i].String(); !strings.HasPrefix(got, w) {
			t.Errorf("finding %d: got %q, want %q…", i+1, got, w)
		}
	}
	if _, err := Parse([]byte("kafka:\n  brokers: [\"10.0.0.5:9092\"]\n  session_timeout: 3s\n")); err != nil {
		t.Fatalf("3s with an external Kafka (its own minimum applies): %v", err)
	}
}

// The days-offline settings: their defaults, the topic configs the bridge
// creates its topics with, and the refusals.
func TestDaysOfflineSettings(t *testing.T) {
	c, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.EmbeddedMessageExpiry != 7*24*time.Hour {
		t.Errorf("mqtt.embedded_message_expiry default: got %s, want 168h", c.MQTT.EmbeddedMessageExpiry)
	}
	if c.Kafka.DLQRetention != DefaultDLQRetention || c.Kafka.DLQRetentionBytes != DefaultDLQRetentionBytes {
		t.Errorf("dlq retention defaults: got %s %d", c.Kafka.DLQRetention, c.Kafka.DLQRetentionBytes)
	}
	tc := c.Kafka.TopicConfigs()
	if got := tc["edgebridge.payment.dlq"]; got["retention.ms"] != "2592000000" || got["retention.bytes"] != "134217728" {
		t.Errorf("dead-letter topic configs: got %v, want 30 days and 128 MiB", got)
	}
	if got := tc["edgebridge.payment.requests"]; got["retention.ms"] != "-1" || got["retention.bytes"] != "-1" {
		t.Errorf("request topic configs: got %v, want -1 and -1", got)
	}
	_, err = Parse([]byte("mqtt:\n  embedded_message_expiry: 10ms\nkafka:\n  dlq_retention: 10s\n  dlq_retention_bytes: 1000\n"))
	for _, want := range []string{"mqtt.embedded_message_expiry: 10ms must be at least 1s", "kafka.dlq_retention: 10s must be at least 1m",
		"kafka.dlq_retention_bytes: 1000 must be at least 1 MiB"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want it to say %q", err, want)
		}
	}
}

// Warnings name the listeners that expose the site, and nothing in the
// defaults (everything on 127.0.0.1).
func TestWarnings(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{name: "defaults", doc: "log:\n  level: info\n"},
		{name: "open broker", doc: "mqtt:\n  embedded_listen: 0.0.0.0:1883\n  embedded_allow_insecure: true\n", want: []string{"mqtt.embedded_listen 0.0.0.0:1883: any client on the network connects without a login or TLS"}},
		{name: "passwords in clear", doc: "mqtt:\n  embedded_listen: 0.0.0.0:1883\n  embedded_allow_insecure: true\n  embedded_auth: {password_file: /nonexistent-yet/passwd}\n",
			want: []string{"mqtt.embedded_listen 0.0.0.0:1883: devices' passwords and payments cross the network in clear text"}},
		{name: "tls without login", doc: "mqtt:\n  embedded_allow_insecure: true\n  embedded_tls: {listen: 0.0.0.0:8883, names: [192.0.2.1]}\n",
			want: []string{"mqtt.embedded_tls.listen 0.0.0.0:8883: TLS without a login"}},
		{name: "kafka on the network", doc: "kafka:\n  embedded_listen: 0.0.0.0:9092\n", want: []string{"kafka.embedded_listen 0.0.0.0:9092: the embedded Kafka broker serves"}},
		{name: "secure", doc: "mqtt:\n  embedded_auth: {password_file: /nonexistent-yet/passwd}\n  embedded_tls: {listen: 0.0.0.0:8883, cert_listen: 0.0.0.0:8884, names: [192.0.2.1]}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			got := cfg.Warnings()
			if len(got) != len(tc.want) {
				t.Fatalf("warnings %q, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("warning %q, want it to start %q", got[i], w)
				}
			}
		})
	}
}
