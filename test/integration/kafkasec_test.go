package integration

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/kit/proc"
	"github.com/edgebridge/edgebridge/kit/testpki"
	"github.com/edgebridge/edgebridge/transcoder"
)

// TestKafkaSASLAndTLS: the Kafka broker as its own process serving TLS
// only and requiring SCRAM-SHA-512. The whole pipeline passes over it.
// Restarted with the wrong password, the bridge is unready, /readyz and
// /metrics name the refused login, and a device's request waits unread in
// the bridge's MQTT session; fixing the password file recovers without a
// restart and the request is answered. No secret is logged.
func TestKafkaSASLAndTLS(t *testing.T) {
	dir := t.TempDir()
	_, caFile, cert, key := serverPKI(t, dir, "kafka")
	const secret, wrong = "kafka-scram-secret-41b9", "not-the-kafka-secret"
	brokerPW, bridgePW := filepath.Join(dir, "broker-password"), filepath.Join(dir, "bridge-password")
	os.WriteFile(brokerPW, []byte(secret+"\n"), 0o600)
	os.WriteFile(bridgePW, []byte(secret+"\n"), 0o600)
	kafkaAddr := freeAddr(t)
	broker := start(t, bins.edgebridge, "broker", "kafka", "-listen", kafkaAddr, "-data", t.TempDir(), "-partitions", "8",
		"-tls-cert", cert, "-tls-key", key, "-sasl-mechanism", "SCRAM-SHA-512", "-sasl-user", "edgebridge", "-sasl-password-file", brokerPW)
	waitFor(t, 20*time.Second, "kafka broker listening", func() bool { return dialable(kafkaAddr) })

	mq := mosquitto(t)
	ledger := filepath.Join(t.TempDir(), "ledger.jsonl")
	pay := startPaymentd(t, freeAddr(t), ledger)
	cfg, admin := writeBridgeConfig(t, bridgeOpts{mqtt: mq, kafka: kafkaAddr, backend: pay.addr,
		kafkaExtra: fmt.Sprintf("  tls: {enabled: true, ca_file: %s}\n  sasl: {mechanism: SCRAM-SHA-512, username: edgebridge, password_file: %s}\n", caFile, bridgePW)})
	b := startBridge(t, cfg, admin)
	ctx := withTimeout(t, 3*time.Minute)
	res := <-runDevices(ctx, devicesimConfig(mq, 10, 50))
	if res.Replied != 500 || len(res.Missing) > 0 {
		t.Fatalf("over SASL and TLS: %d of 500 replied, missing %.300v", res.Replied, res.Missing)
	}
	if err := b.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	logs := b.Output()

	os.WriteFile(bridgePW, []byte(wrong+"\n"), 0o600)
	b = &bridgeProc{&proc.Bridge{Process: start(t, bins.edgebridge, "run", "-config", cfg), Admin: admin}}
	waitFor(t, 30*time.Second, "/readyz to name the refused login", func() bool {
		code, body := b.Readyz()
		return code == 503 && strings.Contains(body, "SASL login refused")
	})
	_, body := b.Readyz()
	t.Logf("/readyz with the wrong Kafka password: %s", strings.TrimSpace(body))
	if v, err := b.Metric(`edgebridge_broker_problem{broker="kafka",reason="auth"}`); err != nil || v != 1 {
		t.Errorf(`edgebridge_broker_problem{broker="kafka",reason="auth"} = %v (%v), want 1`, v, err)
	}

	// A device pays while the login is refused. The bridge holds its MQTT
	// subscription back until Kafka takes its writes, so the request waits
	// in the bridge's session at Mosquitto: nothing acknowledged, no reply.
	if !strings.Contains(body, "mqtt not subscribed") {
		t.Errorf("the bridge subscribed to MQTT although Kafka refused it: %s", body)
	}
	dev := newDevice(t, mq, "term-sasl", "term-sasl")
	dev.publish(t, []byte(`{"request_id":"r-1","amount_minor":100,"currency":"EUR"}`), false)
	select {
	case r := <-dev.replies:
		t.Fatalf("a reply while Kafka refused the bridge's login: %+v", r)
	default:
	}

	// The operator fixes the password file: the bridge logs in, subscribes,
	// and the waiting request is written and answered.
	if err := os.WriteFile(bridgePW, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := dev.await(t, "r-1", transcoder.StatusApproved); r.RequestID != "r-1" {
		t.Errorf("reply %+v", r)
	}
	waitFor(t, 30*time.Second, "ready", b.Ready)
	if err := b.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	if n := strings.Count(b.Output(), "create topics failed"); n != 1 {
		t.Errorf("the refused login was logged %d times, want once:\n%s", n, b.Output())
	}
	for name, out := range map[string]string{"bridge": logs + b.Output(), "broker": broker.Output(), "metrics": b.metricsText()} {
		if strings.Contains(out, secret) || strings.Contains(out, wrong) {
			t.Errorf("the %s output holds a Kafka password", name)
		}
	}
}

// TestEmbeddedKafkaSASLAndTLS: the in-process Kafka broker with
// kafka.embedded_tls and kafka.sasl serves the bridge over TLS with that
// one account, and refuses a client without it.
func TestEmbeddedKafkaSASLAndTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caFile, cert, key := serverPKI(t, dir, "embedded kafka")
	pw := filepath.Join(dir, "password")
	os.WriteFile(pw, []byte("embedded-plain-secret\n"), 0o600)
	mq := mosquitto(t)
	pay := startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
	kafkaAddr := freeAddr(t)
	cfg, admin := writeBridgeConfig(t, bridgeOpts{mqtt: mq, kafka: "embedded", backend: pay.addr,
		kafkaExtra: fmt.Sprintf("  embedded_listen: %s\n  data_dir: %s\n  tls: {enabled: true, ca_file: %s}\n  embedded_tls: {cert_file: %s, key_file: %s}\n  sasl: {mechanism: PLAIN, username: edgebridge, password_file: %s}\n",
			kafkaAddr, t.TempDir(), caFile, cert, key, pw)})
	b := startBridge(t, cfg, admin)
	ctx := withTimeout(t, 2*time.Minute)
	res := <-runDevices(ctx, devicesimConfig(mq, 4, 25))
	if res.Replied != 100 || len(res.Missing) > 0 {
		t.Fatalf("%d of 100 replied, missing %.300v", res.Replied, res.Missing)
	}
	// Without the account, or without TLS, the broker does not serve.
	for what, sec := range map[string]kafkapipe.Security{
		"no SASL": {TLS: trusting(t, ca)},
		"no TLS":  {},
	} {
		if err := kafkapipe.Ping(ctx, []string{kafkaAddr}, sec); err == nil {
			t.Errorf("the embedded broker answered a client with %s", what)
		}
	}
	if err := b.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	if strings.Contains(b.Output(), "embedded-plain-secret") {
		t.Error("the bridge logged the Kafka password")
	}
}

// trusting is a client TLS configuration that trusts ca.
func trusting(t *testing.T, ca *testpki.CA) *tls.Config {
	t.Helper()
	tc := &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}
	tc.RootCAs.AppendCertsFromPEM(ca.PEM)
	return tc
}

// serverPKI makes a CA and a server certificate it signed for 127.0.0.1
// and localhost, written to dir; it returns the CA and the three files.
func serverPKI(t *testing.T, dir, name string) (ca *testpki.CA, caFile, certFile, keyFile string) {
	t.Helper()
	ca, err := testpki.NewCA(name + " CA")
	if err != nil {
		t.Fatal(err)
	}
	if caFile, err = ca.WriteCA(dir, "ca"); err != nil {
		t.Fatal(err)
	}
	c, k, err := ca.Server(name)
	if err != nil {
		t.Fatal(err)
	}
	if certFile, keyFile, err = testpki.WritePair(dir, "server", c, k); err != nil {
		t.Fatal(err)
	}
	return ca, caFile, certFile, keyFile
}
