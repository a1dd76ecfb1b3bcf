package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/proc"
	"github.com/edgebridge/edgebridge/kit/testpki"
)

// TestMutualTLSBackend: paymentd with -tls-client-ca refuses a bridge
// without a client certificate (the bridge is unready, reason tls) and
// serves one with; then, while devices pay, every certificate and CA moves
// to a new CA (both sides' files rewritten in place, connections recycled
// by paymentd's -max-connection-age), then the bearer token: nothing is
// lost or processed twice, and neither process restarts.
func TestMutualTLSBackend(t *testing.T) {
	dir := t.TempDir()
	ca1, err := testpki.NewCA("backend CA 1")
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := testpki.NewCA("backend CA 2")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string, pair func(string) ([]byte, []byte, error), cn string) (string, string) {
		t.Helper()
		c, k, err := pair(cn)
		if err != nil {
			t.Fatal(err)
		}
		cert, key, err := testpki.WritePair(dir, name, c, k)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}
	writeCAs := func(name string, cas ...*testpki.CA) string {
		t.Helper()
		var pem []byte
		for _, ca := range cas {
			pem = append(pem, ca.PEM...)
		}
		path := filepath.Join(dir, name+".pem")
		if err := os.WriteFile(path, pem, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	srvCert, srvKey := issue("paymentd", ca1.Server, "paymentd")
	cliCert, cliKey := issue("bridge", ca1.Client, "edgebridge")
	clientCAs, serverCAs := writeCAs("client-ca", ca1), writeCAs("server-ca", ca1)

	s := &stack{mqtt: mosquitto(t), kafka: kafkaBroker(t)}
	ledger := filepath.Join(t.TempDir(), "ledger.jsonl")
	token := filepath.Join(dir, "token")
	bridgeToken := filepath.Join(dir, "bridge-token")
	for _, f := range []string{token, bridgeToken} {
		if err := os.WriteFile(f, []byte("first-token-5d2e\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.pay = startPaymentd(t, freeAddr(t), ledger, "-tls-cert", srvCert, "-tls-key", srvKey, "-tls-client-ca", clientCAs,
		"-token-file", token, "-max-connection-age", "1s")

	// No client certificate: refused, and /readyz says why.
	cfg, admin := writeBridgeConfig(t, bridgeOpts{mqtt: s.mqtt, kafka: s.kafka, backend: s.pay.addr,
		extra: fmt.Sprintf("  tls: {enabled: true, ca_file: %s, server_name: localhost}\n", serverCAs)})
	p := start(t, bins.edgebridge, "run", "-config", cfg)
	unready := &bridgeProc{&proc.Bridge{Process: p, Admin: admin}}
	waitFor(t, 30*time.Second, "/readyz to name the TLS failure", func() bool {
		code, body := unready.Readyz()
		return code == 503 && strings.Contains(body, "tls")
	})
	_, body := unready.Readyz()
	t.Logf("/readyz without a client certificate: %s", strings.TrimSpace(body))
	if err := unready.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}

	// With one: devices pay while everything rotates.
	cfg, admin = writeBridgeConfig(t, bridgeOpts{mqtt: s.mqtt, kafka: s.kafka, backend: s.pay.addr,
		extra: fmt.Sprintf("  tls: {enabled: true, ca_file: %s, cert_file: %s, key_file: %s, server_name: localhost}\n  token_file: %s\n",
			serverCAs, cliCert, cliKey, bridgeToken)})
	s.bridge = startBridge(t, cfg, admin)
	dcfg := devicesimConfig(s.mqtt, 10, 100)
	dcfg.Outstanding = 1
	dcfg.Counters = new(devicesim.Counters)
	ctx := withTimeout(t, 3*time.Minute)
	done := runDevices(ctx, dcfg)
	reconnects := func() float64 { return sumMetric(s.bridge, "edgebridge_grpc_stream_reconnects_total") }
	waitReconnects := func(what string) {
		t.Helper()
		from := reconnects()
		waitFor(t, 30*time.Second, what, func() bool { return reconnects() >= from+2 && s.bridge.Ready() })
	}
	waitFor(t, time.Minute, "a quarter of the replies", func() bool { return dcfg.Counters.Replied.Load() >= 250 })
	// Both CAs trusted, then new certificates from CA 2 on both sides...
	writeCAs("client-ca", ca1, ca2)
	writeCAs("server-ca", ca1, ca2)
	issue("paymentd", ca2.Server, "paymentd")
	issue("bridge", ca2.Client, "edgebridge")
	waitReconnects("connections with the new certificates")
	// ...then CA 1 no longer: only the rotated certificates can connect.
	writeCAs("client-ca", ca2)
	writeCAs("server-ca", ca2)
	waitReconnects("connections trusting CA 2 only")
	// And a new bearer token on both sides.
	for _, f := range []string{token, bridgeToken} {
		if err := os.WriteFile(f, []byte("second-token-93af\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	waitReconnects("connections with the new token")
	res := <-done
	if res.Replied != 1000 || len(res.Missing) > 0 || res.Lost() > 0 {
		t.Fatalf("replied %d of 1000, lost %d, missing %.300v", res.Replied, res.Lost(), res.Missing)
	}
	checkLedger(t, ledger, dcfg)
	if !bytes.Contains([]byte(s.pay.Output()), []byte("paymentd listening")) || strings.Count(s.pay.Output(), "paymentd listening") != 1 {
		t.Error("paymentd restarted")
	}
	t.Logf("stream reconnects during the run: %v", reconnects())
	for name, out := range map[string]string{"bridge": s.bridge.Output(), "paymentd": s.pay.Output(), "metrics": s.bridge.metricsText()} {
		if strings.Contains(out, "first-token-5d2e") || strings.Contains(out, "second-token-93af") {
			t.Errorf("the %s output holds the bearer token", name)
		}
	}
}

// sumMetric adds up every sample of a metric family on the bridge's /metrics.
func sumMetric(b *bridgeProc, name string) float64 {
	var sum float64
	for _, line := range strings.Split(b.metricsText(), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
				sum += v
			}
		}
	}
	return sum
}
