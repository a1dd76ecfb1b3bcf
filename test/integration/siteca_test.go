package integration

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os/exec"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgebridge/edgebridge/internal/devicesim"
)

// TestSiteCA: with mqtt.embedded_tls and no certificate configured, the
// bridge makes the site's CA and a server certificate for the names
// devices dial on its first start; `edgebridge site ca` prints the CA, and
// devices that trust it are answered over TLS while one that does not is
// refused. A restart reuses the same CA.
func TestSiteCA(t *testing.T) {
	pay := startPaymentd(t, freeAddr(t), t.TempDir()+"/ledger.jsonl")
	tlsAddr := freeAddr(t)
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: "embedded", kafka: "embedded", backend: pay.addr,
		mqttExtra: fmt.Sprintf("  embedded_listen: %s\n  embedded_tls: {listen: %s, names: [\"127.0.0.1\"]}\n", freeAddr(t), tlsAddr)})
	br := startBridge(t, cfgPath, admin)

	siteCA := func() []byte {
		t.Helper()
		out, err := exec.Command(bins.edgebridge, "site", "ca", "-config", cfgPath).Output()
		if block, _ := pem.Decode(out); err != nil || block == nil || block.Type != "CERTIFICATE" {
			t.Fatalf("edgebridge site ca: %v\n%s", err, out)
		}
		return out
	}
	caPEM := siteCA()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	devs := devicesim.Config{Broker: "ssl://" + tlsAddr, Devices: 5, Requests: 10, Drain: time.Minute,
		Connect: func(string) devicesim.Conn {
			return devicesim.Conn{TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
		}}
	res, err := devicesim.Run(withTimeout(t, 2*time.Minute), devs, nil)
	if err != nil || res.Replied != 50 {
		t.Fatalf("devices trusting the site CA: %d of 50 replied, %v", res.Replied, err)
	}
	if v, err := br.metric("edgebridge_mqtt_server_cert_expiry_timestamp_seconds"); err != nil ||
		time.Until(time.Unix(int64(v), 0)) < 396*24*time.Hour {
		t.Errorf("server certificate expiry metric %v (%v), want about 397 days ahead", v, err)
	}

	// A device that does not trust the site CA (the system roots) is refused.
	c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + tlsAddr).SetClientID("stranger").
		SetTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		c.Disconnect(0)
		t.Fatal("a device that does not trust the site CA connected")
	}

	// A restart reuses the CA.
	if err := br.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	startBridge(t, cfgPath, admin)
	if again := siteCA(); !bytes.Equal(again, caPEM) {
		t.Fatal("the restarted bridge made another site CA")
	}
}
