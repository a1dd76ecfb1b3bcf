package integration

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgebridge/edgebridge/kit/devicesim"
)

// TestMosquittoSite runs a site's Mosquitto as the site-mosquitto base and
// docker-compose.upstream.yml do, with the host's Mosquitto: the shipped
// site mosquitto.conf, started by first-start.sh, its files kept by
// `edgebridge site mosquitto` (the sidecar), devices provisioned with
// `edgebridge device`, the bridge on the loopback listener with the
// generated account. Without a restart of Mosquitto (a device connected
// all along stays connected):
//   - a request published before the bridge ever connected is answered;
//   - a device added while Mosquitto runs can log in, and is answered;
//   - a removed device's open connection is closed and its next login
//     refused; a removed device's certificate is refused (the CRL);
//   - anonymous clients and clear text are refused.
func TestMosquittoSite(t *testing.T) {
	dir := t.TempDir()
	site := filepath.Join(dir, "site")
	keeper := start(t, bins.edgebridge, "site", "mosquitto", "-data", dir, "-names", "127.0.0.1")
	waitFor(t, 20*time.Second, "edgebridge site mosquitto to write the site files", func() bool {
		for _, f := range []string{"server.pem", "passwd", "crl.pem", "bridge.password"} {
			if st, err := os.Stat(filepath.Join(site, f)); err != nil || st.Size() == 0 {
				return false
			}
		}
		return true
	})
	device := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bins.edgebridge, append(append([]string{"device"}, args...), "-data", dir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("device %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	password := func(out string) string {
		_, pw, _ := strings.Cut(strings.TrimSpace(out), "(shown only now): ")
		return pw
	}
	pw1 := password(device("add", "term-0001"))

	// The shipped site config, with this test's ports and directories.
	raw, err := os.ReadFile("../../deploy/k3s/site-mosquitto/mosquitto.conf")
	if err != nil {
		t.Fatal(err)
	}
	a := freeAddrs(t, 4)
	bridgeAddr, tlsAddr, certAddr, firstAddr := a[0], a[1], a[2], a[3]
	for _, d := range []string{"config", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	acl, err := os.ReadFile("../../deploy/k3s/site-mosquitto/acl")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config", "acl"), acl, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer(
		"listener 1883 127.0.0.1\n", fmt.Sprintf("listener %d 127.0.0.1\n", port(bridgeAddr)),
		"listener 8883\n", fmt.Sprintf("listener %d 127.0.0.1\n", port(tlsAddr)),
		"listener 8884\n", fmt.Sprintf("listener %d 127.0.0.1\n", port(certAddr)),
		"/edgebridge/site/", site+"/", "/mosquitto/config/", dir+"/config/", "/mosquitto/data/", dir+"/data/",
	).Replace(string(raw)) + "\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
	if os.Geteuid() == 0 {
		conf += "user root\n"
	}
	confFile := filepath.Join(dir, "config", "mosquitto.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	const clientID = "edgebridge-site"
	sh := startEnv(t, []string{"EDGEBRIDGE_CLIENT_ID=" + clientID, "EDGEBRIDGE_SITE=" + site, "MOSQUITTO_CONF=" + confFile,
		"MOSQUITTO_DATA=" + filepath.Join(dir, "data"), fmt.Sprintf("MOSQUITTO_FIRST_PORT=%d", port(firstAddr))},
		"sh", "../../deploy/k3s/site-mosquitto/first-start.sh")
	t.Cleanup(func() { stopScript(t, sh) })
	waitFor(t, 30*time.Second, "mosquitto to listen", func() bool { return dialable(tlsAddr) && dialable(certAddr) && dialable(bridgeAddr) })

	caPEM, err := exec.Command(bins.edgebridge, "site", "ca", "-data", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	tlsURL, certURL := "ssl://"+tlsAddr, "ssl://"+certAddr

	// term-0001 publishes before the bridge has ever connected.
	early := make(chan devicesim.Result, 1)
	go func() {
		res, _ := devicesim.Run(withTimeout(t, 2*time.Minute), devicesim.Config{Broker: tlsURL, Devices: 1, Requests: 10, DevicePrefix: "term",
			Drain: time.Minute, Connect: func(string) devicesim.Conn { return devicesim.Conn{Username: "term-0001", Password: pw1, TLS: tc} }}, nil)
		early <- res
	}()
	// A watcher connected all along: Mosquitto is never restarted.
	watchLost := make(chan error, 1)
	watch := paho.NewClient(paho.NewClientOptions().AddBroker(tlsURL).SetClientID("watch").SetUsername("term-0001").SetPassword(pw1).
		SetTLSConfig(tc).SetAutoReconnect(false).SetConnectionLostHandler(func(_ paho.Client, err error) { watchLost <- err }))
	if tok := watch.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("term-0001 (watcher): %v", tok.Error())
	}
	defer watch.Disconnect(0)

	pay := startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: "tcp://" + bridgeAddr, kafka: "embedded", backend: pay.addr, clientID: clientID,
		mqttExtra: fmt.Sprintf("  username: edgebridge\n  password_file: %s\n", filepath.Join(site, "bridge.password"))})
	startBridge(t, cfgPath, admin)
	if res := <-early; res.Replied != 10 || res.Lost() != 0 {
		t.Fatalf("requests published before the bridge first connected: %d of 10 answered, %d lost", res.Replied, res.Lost())
	}

	// Strangers are refused.
	for name, o := range map[string]*paho.ClientOptions{
		"anonymous over TLS":      paho.NewClientOptions().AddBroker(tlsURL).SetTLSConfig(tc),
		"anonymous on the bridge": paho.NewClientOptions().AddBroker("tcp://" + bridgeAddr),
		"clear text on 8883":      paho.NewClientOptions().AddBroker("tcp://" + tlsAddr).SetUsername("term-0001").SetPassword(pw1),
		"no certificate on 8884":  paho.NewClientOptions().AddBroker(certURL).SetTLSConfig(tc),
		"a device as the bridge":  paho.NewClientOptions().AddBroker("tcp://" + bridgeAddr).SetUsername("edgebridge").SetPassword(pw1),
	} {
		if c, err := connectWith(o); err == nil {
			c.Disconnect(0)
			t.Errorf("%s: connected, want refused", name)
		}
	}

	// A device added while Mosquitto runs logs in once it has reloaded.
	pw2 := password(device("add", "term-0002"))
	var c2 paho.Client
	var lost2 chan error
	waitFor(t, 20*time.Second, "Mosquitto to reload the password file", func() bool {
		lost2 = make(chan error, 1)
		c, err := connectWith(paho.NewClientOptions().AddBroker(tlsURL).SetUsername("term-0002").SetPassword(pw2).SetTLSConfig(tc).
			SetConnectionLostHandler(func(_ paho.Client, err error) { lost2 <- err }))
		c2 = c
		return err == nil
	})
	defer c2.Disconnect(0)
	// A certificate from the site CA, on 8884.
	certDir := t.TempDir()
	device("cert", "term-0003", "-out", certDir)
	pair, err := tls.LoadX509KeyPair(filepath.Join(certDir, "term-0003.pem"), filepath.Join(certDir, "term-0003.key"))
	if err != nil {
		t.Fatal(err)
	}
	withCert := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	res, err := devicesim.Run(withTimeout(t, 2*time.Minute), devicesim.Config{Broker: tlsURL, Devices: 3, Requests: 10, DevicePrefix: "term",
		Drain: time.Minute, Connect: func(id string) devicesim.Conn {
			switch id {
			case "term-0002":
				return devicesim.Conn{Username: id, Password: pw2, TLS: tc}
			case "term-0003":
				return devicesim.Conn{Broker: certURL, TLS: withCert}
			}
			return devicesim.Conn{Username: id, Password: pw1, TLS: tc}
		}}, nil)
	if err != nil || res.Replied != 30 {
		t.Fatalf("term-0001..3 (password, password added live, certificate): %d of 30 answered, %v", res.Replied, err)
	}

	// Removed: term-0002's connection is closed and its login refused;
	// term-0003's certificate is refused.
	device("remove", "term-0002")
	device("remove", "term-0003")
	select {
	case err := <-lost2:
		t.Logf("term-0002's connection closed after device remove: %v", err)
	case <-time.After(20 * time.Second):
		t.Error("device remove: term-0002's open connection is still up after 20s")
	}
	waitFor(t, 20*time.Second, "Mosquitto to refuse the removed devices", func() bool {
		c, err := connectWith(paho.NewClientOptions().AddBroker(tlsURL).SetUsername("term-0002").SetPassword(pw2).SetTLSConfig(tc))
		if err == nil {
			c.Disconnect(0)
			return false
		}
		c, err = connectWith(paho.NewClientOptions().AddBroker(certURL).SetTLSConfig(withCert))
		if err == nil {
			c.Disconnect(0)
		}
		return err != nil
	})
	select {
	case err := <-watchLost:
		t.Fatalf("term-0001, connected all along, was disconnected (Mosquitto restarted?): %v", err)
	default:
	}
	if !watch.IsConnectionOpen() {
		t.Fatal("term-0001, connected all along, is not connected")
	}
	if err := keeper.Exited(); err != nil {
		t.Fatalf("the site sidecar (keeps the certificate and the CRL current) stopped: %v", err)
	}
}
