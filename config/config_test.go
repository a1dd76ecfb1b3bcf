package config

import (
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
		{name: "tls settings without tls", doc: "backend:\n  tls:\n    server_name: x\n", want: []string{"enabled is false"}},
		{name: "subscribe must end in device level", doc: "mqtt:\n  subscribe: [\"payment/#\"]\n", want: []string{"mqtt.subscribe"}},
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
