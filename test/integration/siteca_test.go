package integration

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgebridge/edgebridge/kit/devicesim"
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
	if v, err := br.Metric("edgebridge_mqtt_server_cert_expiry_timestamp_seconds"); err != nil ||
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
	if err := br.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	startBridge(t, cfgPath, admin)
	if again := siteCA(); !bytes.Equal(again, caPEM) {
		t.Fatal("the restarted bridge made another site CA")
	}
}

// TestDeviceProvisioning: devices provisioned with `edgebridge device`
// (a generated password printed once, a password from stdin, a certificate
// from the site CA) are answered over TLS by the embedded broker, passwords
// on one listener and certificates on another; strangers, wrong passwords
// and invalid ids are refused; `device remove` closes the removed device's
// open connection and refuses its next login or handshake, with no
// restart, while the other devices keep working.
func TestDeviceProvisioning(t *testing.T) {
	pay := startPaymentd(t, freeAddr(t), t.TempDir()+"/ledger.jsonl")
	a := freeAddrs(t, 2)
	dataDir, tlsAddr, certAddr := t.TempDir(), a[0], a[1]
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: "embedded", kafka: "embedded", backend: pay.addr,
		kafkaExtra: "  data_dir: " + dataDir + "\n",
		mqttExtra: fmt.Sprintf("  embedded_listen: %s\n  embedded_auth: {password_file: %s}\n  embedded_tls: {listen: %s, cert_listen: %s, names: [\"127.0.0.1\"]}\n",
			freeAddr(t), filepath.Join(dataDir, "site", "passwd"), tlsAddr, certAddr)})
	device := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(bins.edgebridge, append(append([]string{"device"}, args...), "-config", cfgPath)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := device("", "add", "term-0001")
	_, pw1, ok := strings.Cut(strings.TrimSpace(out), "(shown only now): ")
	if err != nil || !ok || len(pw1) < 32 {
		t.Fatalf("device add term-0001: %v\n%s", err, out)
	}
	if out, err := device("given-password-2\n", "add", "term-0002", "-password-stdin"); err != nil || strings.Contains(out, "given-password-2") {
		t.Fatalf("device add -password-stdin: %v\n%s", err, out)
	}
	for _, id := range []string{"a/b", "a:b", "+"} {
		if out, err := device("", "add", id); err == nil {
			t.Errorf("device add %q accepted:\n%s", id, out)
		}
	}
	passwords := map[string]string{"term-0001": pw1, "term-0002": "given-password-2"}

	br := startBridge(t, cfgPath, admin)
	caOut, err := exec.Command(bins.edgebridge, "site", "ca", "-config", cfgPath).Output()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caOut)
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}

	// A certificate from the site CA, for a device that connects with one.
	certDir := t.TempDir()
	if out, err := device("", "cert", "term-0003", "-out", certDir); err != nil {
		t.Fatalf("device cert: %v\n%s", err, out)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(certDir, "term-0003.pem"), filepath.Join(certDir, "term-0003.key"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || leaf.Subject.CommonName != "term-0003" {
		t.Fatalf("term-0003's certificate: CN %q, %v", leaf.Subject.CommonName, err)
	}
	withCert := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}

	// term-0001 and term-0002 log in with passwords, term-0003 with its
	// certificate on the certificate listener.
	res, err := devicesim.Run(withTimeout(t, 2*time.Minute), devicesim.Config{Broker: "ssl://" + tlsAddr, Devices: 3, Requests: 10,
		DevicePrefix: "term", Drain: time.Minute,
		Connect: func(id string) devicesim.Conn {
			if id == "term-0003" {
				return devicesim.Conn{Broker: "ssl://" + certAddr, TLS: withCert}
			}
			return devicesim.Conn{Username: id, Password: passwords[id], TLS: tc}
		}}, nil)
	if err != nil || res.Replied != 30 {
		t.Fatalf("provisioned devices: %d of 30 replied, %v", res.Replied, err)
	}
	if c, err := connect("ssl://"+certAddr, "probe", "", "", tc); err == nil {
		c.Disconnect(0)
		t.Error("the certificate listener accepted a device without a certificate")
	}
	for what, who := range map[string][2]string{"anonymous": {"", ""}, "a wrong password": {"term-0001", "not-the-password"},
		"an unknown device": {"term-0009", pw1}} {
		if c, err := connect("ssl://"+tlsAddr, "probe", who[0], who[1], tc); err == nil {
			c.Disconnect(0)
			t.Errorf("%s was accepted", what)
		}
	}
	if n, err := br.Metric("edgebridge_mqtt_login_failures_total"); err != nil || n < 3 {
		t.Errorf("edgebridge_mqtt_login_failures_total %v (%v), want the 3 refused logins counted", n, err)
	}

	// term-0001 is connected when it is removed.
	lost := make(chan error, 1)
	c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + tlsAddr).SetClientID("term-0001").SetUsername("term-0001").
		SetPassword(pw1).SetTLSConfig(tc).SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err }))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("term-0001 connect: %v", tok.Error())
	}
	if out, err := device("", "remove", "term-0001"); err != nil {
		t.Fatalf("device remove: %v\n%s", err, out)
	}
	select {
	case <-lost:
	case <-time.After(20 * time.Second):
		t.Fatal("the removed device's open connection was not closed within 20s")
	}
	if c, err := connect("ssl://"+tlsAddr, "term-0001", "term-0001", pw1, tc); err == nil {
		c.Disconnect(0)
		t.Fatal("the removed device logged in again")
	}
	if c, err := connect("ssl://"+tlsAddr, "term-0002", "term-0002", "given-password-2", tc); err != nil {
		t.Fatalf("term-0002 after term-0001's removal: %v", err)
	} else {
		c.Disconnect(0)
	}

	// term-0003's certificate is revoked while it is connected.
	lostCert := make(chan error, 1)
	c3 := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + certAddr).SetClientID("term-0003").
		SetTLSConfig(withCert).SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lostCert <- err }))
	if tok := c3.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("term-0003 connect: %v", tok.Error())
	}
	if out, err := device("", "list"); err != nil || !strings.Contains(out, "term-0003") {
		t.Fatalf("device list before the revocation: %v\n%s", err, out)
	}
	if out, err := device("", "remove", "term-0003"); err != nil {
		t.Fatalf("device remove term-0003: %v\n%s", err, out)
	}
	select {
	case <-lostCert:
	case <-time.After(20 * time.Second):
		t.Fatal("the revoked certificate's open connection was not closed within 20s")
	}
	if c, err := connect("ssl://"+certAddr, "term-0003", "", "", withCert); err == nil {
		c.Disconnect(0)
		t.Fatal("a revoked certificate connected again")
	}
	if out, err := device("", "list"); err != nil || !strings.Contains(out, "term-0002") || strings.Contains(out, "term-0003") || strings.Contains(out, "term-0001") {
		t.Fatalf("device list: %v\n%s", err, out)
	}
}

// TestDevicePasswordsOnMosquitto: the password file `edgebridge device`
// writes is Mosquitto's own format: the host's Mosquitto lets a provisioned
// device in with its password and refuses a wrong one, an unknown device
// and, once it is removed (Mosquitto re-reads the file on SIGHUP), the
// removed device.
func TestDevicePasswordsOnMosquitto(t *testing.T) {
	data := t.TempDir()
	device := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bins.edgebridge, append(append([]string{"device"}, args...), "-data", data)...).CombinedOutput()
		if err != nil {
			t.Fatalf("device %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	_, pw, _ := strings.Cut(strings.TrimSpace(device("add", "term-0001")), "(shown only now): ")
	m := startMosquittoConf(t, fmt.Sprintf("allow_anonymous false\npassword_file %s\n", filepath.Join(data, "site", "passwd")))
	for what, who := range map[string][2]string{"the device": {"term-0001", pw}, "a wrong password": {"term-0001", pw + "x"},
		"an unknown device": {"term-0002", pw}, "anonymous": {"", ""}} {
		c, err := connect(m.url(), "probe", who[0], who[1], nil)
		if ok := what == "the device"; (err == nil) != ok {
			t.Errorf("%s: connect error %v", what, err)
		}
		if err == nil {
			c.Disconnect(0)
		}
	}
	device("remove", "term-0001")
	signal(t, m.p, syscall.SIGHUP)
	waitFor(t, 10*time.Second, "Mosquitto to refuse the removed device", func() bool {
		c, err := connect(m.url(), "probe", "term-0001", pw, nil)
		if err == nil {
			c.Disconnect(0)
		}
		return err != nil
	})
}
