package integration

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	mosquittoconf "github.com/edgebridge/edgebridge/deploy/mosquitto"
	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/proc"
	"github.com/edgebridge/edgebridge/kit/testpki"
	"github.com/edgebridge/edgebridge/transcoder"
)

// site is Mosquitto with the shipped production config: a password
// listener and a certificate listener, both TLS, the shipped ACL, and a
// password file provisioned with mosquitto_passwd.
type site struct {
	dir                  string
	passwordURL, certURL string
	serverCA, deviceCA   *testpki.CA
	serverCAFile         string
	passwords            map[string]string // username -> password
}

func startSite(t *testing.T, passwords map[string]string) *site {
	t.Helper()
	s := &site{dir: t.TempDir(), passwords: passwords}
	var err error
	if s.serverCA, err = testpki.NewCA("site server CA"); err != nil {
		t.Fatal(err)
	}
	if s.deviceCA, err = testpki.NewCA("site device CA"); err != nil {
		t.Fatal(err)
	}
	if s.serverCAFile, err = s.serverCA.WriteCA(s.dir, "server-ca"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.deviceCA.WriteCA(s.dir, "device-ca"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.deviceCA.WriteCRL(s.dir, "crl"); err != nil {
		t.Fatal(err)
	}
	cert, key, err := s.serverCA.Server("mosquitto")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := testpki.WritePair(s.dir, "server", cert, key); err != nil {
		t.Fatal(err)
	}
	// mosquitto_passwd -U hashes a file of user:password lines in place.
	var plain strings.Builder
	for u, p := range passwords {
		fmt.Fprintf(&plain, "%s:%s\n", u, p)
	}
	passwd := filepath.Join(s.dir, "passwd")
	if err := os.WriteFile(passwd, []byte(plain.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mosquitto_passwd", "-U", passwd).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd -U: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "acl"), []byte(mosquittoconf.ShippedACL), 0o644); err != nil {
		t.Fatal(err)
	}
	a := freeAddrs(t, 2)
	pwAddr, certAddr := a[0], a[1]
	conf := filepath.Join(s.dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(mosquittoconf.Production(port(pwAddr), port(certAddr), s.dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, "mosquitto", "-c", conf)
	waitFor(t, 10*time.Second, "mosquitto to listen", func() bool { return dialable(pwAddr) && dialable(certAddr) })
	s.passwordURL, s.certURL = "ssl://"+pwAddr, "ssl://"+certAddr
	return s
}

func port(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// tlsFor trusts the site's server CA and presents a certificate for cn
// from ca, if ca is given.
func (s *site) tlsFor(t *testing.T, ca *testpki.CA, cn string) *tls.Config {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.serverCA.PEM)
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if ca != nil {
		certPEM, keyPEM, err := ca.Client(cn)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc
}

// connect opens an MQTT session (clean) and returns it or the error.
func connect(broker, clientID, user, password string, tc *tls.Config) (paho.Client, error) {
	return connectWith(paho.NewClientOptions().AddBroker(broker).SetClientID(clientID).SetCleanSession(true).
		SetUsername(user).SetPassword(password).SetTLSConfig(tc))
}

// connectWith connects a client with o (a fresh client id unless o has
// one, no reconnects) and returns it or the error.
func connectWith(o *paho.ClientOptions) (paho.Client, error) {
	if o.ClientID == "" {
		o.SetClientID(fmt.Sprintf("probe-%d", time.Now().UnixNano()))
	}
	c := paho.NewClient(o.SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, fmt.Errorf("connect: no answer within 10s")
	}
	return c, tok.Error()
}

// TestDeviceIdentityOnMosquitto: with the shipped production Mosquitto
// config, the bridge connects over TLS with its password and devices with
// passwords or client certificates are all answered; a wrong password, an
// untrusted CA and plain TCP to a TLS port are refused at connect; and no
// device can pay as another, read another's replies or forge them.
func TestDeviceIdentityOnMosquitto(t *testing.T) {
	const devices, requests = 10, 50
	passwords := map[string]string{"edgebridge": "bridge-secret-7f3a"}
	for i := 1; i <= devices/2; i++ {
		passwords[fmt.Sprintf("dev-%04d", i)] = fmt.Sprintf("device-secret-%d", i)
	}
	s := startSite(t, passwords)
	kafkaAddr := kafkaBroker(t)
	ledger := filepath.Join(t.TempDir(), "ledger.jsonl")
	pay := startPaymentd(t, freeAddr(t), ledger)
	pwFile := filepath.Join(t.TempDir(), "mqtt-password")
	if err := os.WriteFile(pwFile, []byte(passwords["edgebridge"]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, admin := writeBridgeConfig(t, bridgeOpts{mqtt: s.passwordURL, kafka: kafkaAddr, backend: pay.addr,
		mqttExtra: fmt.Sprintf("  username: edgebridge\n  password_file: %s\n  tls: {enabled: true, ca_file: %s}\n", pwFile, s.serverCAFile)})
	b := startBridge(t, cfg, admin)

	// Half the devices use passwords on 8883, half client certificates on 8884.
	ctx := withTimeout(t, 3*time.Minute)
	res := <-runDevices(ctx, devicesim.Config{Broker: s.passwordURL, Devices: devices, Requests: requests, Outstanding: 2,
		Connect: func(id string) devicesim.Conn {
			if pw, ok := passwords[id]; ok {
				return devicesim.Conn{Username: id, Password: pw, TLS: s.tlsFor(t, nil, "")}
			}
			return devicesim.Conn{Broker: s.certURL, TLS: s.tlsFor(t, s.deviceCA, id)}
		}})
	if res.Replied != devices*requests || len(res.Missing) > 0 {
		t.Fatalf("authenticated devices: %d of %d replied, missing %.300v", res.Replied, devices*requests, res.Missing)
	}

	// Refused at connect.
	if c, err := connect(s.passwordURL, "wrong-pw", "dev-0001", "not-the-password", s.tlsFor(t, nil, "")); err == nil {
		c.Disconnect(0)
		t.Error("a wrong password was accepted")
	}
	otherCA, _ := testpki.NewCA("somebody else's CA")
	untrusting := &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}
	untrusting.RootCAs.AppendCertsFromPEM(otherCA.PEM)
	if c, err := connect(s.passwordURL, "untrusted", "dev-0001", passwords["dev-0001"], untrusting); err == nil {
		c.Disconnect(0)
		t.Error("a client that does not trust the server's CA connected")
	}
	if c, err := connect(s.certURL, "foreign-cert", "", "", s.tlsFor(t, otherCA, "dev-0006")); err == nil {
		c.Disconnect(0)
		t.Error("a client certificate from an untrusted CA was accepted")
	}
	if c, err := connect("tcp://"+strings.TrimPrefix(s.passwordURL, "ssl://"), "plain", "dev-0001", passwords["dev-0001"], nil); err == nil {
		c.Disconnect(0)
		t.Error("plain TCP to the TLS port connected")
	}

	// A (password) and a stranger (a certificate from the device CA whose
	// CN is no provisioned device) try to read B's replies while B pays,
	// then to pay as B and to forge B's replies.
	checkIsolation(t, kafkaAddr, ledger,
		identity{"dev-0002", s.passwordURL, "dev-0002", passwords["dev-0002"], s.tlsFor(t, nil, "")},
		identity{"dev-0001", s.passwordURL, "dev-0001", passwords["dev-0001"], s.tlsFor(t, nil, "")},
		identity{"stranger", s.certURL, "", "", s.tlsFor(t, s.deviceCA, "stranger")})

	if err := b.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	logs := b.Output()

	// The bridge again, now with a client certificate (CN edgebridge) on
	// the certificate listener and no password.
	certPEM, keyPEM, err := s.deviceCA.Client("edgebridge")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := testpki.WritePair(t.TempDir(), "bridge", certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg, admin = writeBridgeConfig(t, bridgeOpts{mqtt: s.certURL, kafka: kafkaAddr, backend: pay.addr,
		mqttExtra: fmt.Sprintf("  tls: {enabled: true, ca_file: %s, cert_file: %s, key_file: %s}\n", s.serverCAFile, certFile, keyFile)})
	b = startBridge(t, cfg, admin)
	res = <-runDevices(ctx, devicesim.Config{Broker: s.passwordURL, Devices: 2, Requests: 50, Outstanding: 2, DevicePrefix: "dev",
		Connect: func(id string) devicesim.Conn {
			return devicesim.Conn{Username: id, Password: passwords[id], TLS: s.tlsFor(t, nil, "")}
		}})
	if res.Replied != 100 || len(res.Missing) > 0 {
		t.Fatalf("with the bridge on a client certificate: %d of 100 replied, missing %.300v", res.Replied, res.Missing)
	}
	if err := b.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	for _, secret := range passwords {
		if strings.Contains(logs+b.Output(), secret) {
			t.Errorf("the bridge's log holds a password")
		}
	}
}

// authedDevice is one device connected with its own credentials.
type authedDevice struct {
	id      string
	c       paho.Client
	replies chan transcoder.Reply
}

func newAuthedDevice(t *testing.T, who identity, clientID string) *authedDevice {
	t.Helper()
	c, err := who.connect(clientID)
	if err != nil {
		t.Fatalf("device %s: %v", who.id, err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	d := &authedDevice{id: who.id, c: c, replies: make(chan transcoder.Reply, 16)}
	c.Subscribe("payment/response/"+who.id, 1, func(_ paho.Client, m paho.Message) {
		var r transcoder.Reply
		if json.Unmarshal(m.Payload(), &r) == nil {
			d.replies <- r
		}
	}).WaitTimeout(5 * time.Second)
	return d
}

func (d *authedDevice) publish(t *testing.T, topic, payload string) {
	t.Helper()
	if tok := d.c.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s publish to %s: %v", d.id, topic, tok.Error())
	}
}

func (d *authedDevice) await(t *testing.T, requestID string) transcoder.Reply {
	t.Helper()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for {
		select {
		case r := <-d.replies:
			if r.RequestID == requestID {
				return r
			}
			t.Errorf("%s: unexpected reply %+v", d.id, r)
		case <-timer.C:
			t.Fatalf("%s: no reply to %s within 30s", d.id, requestID)
			return transcoder.Reply{}
		}
	}
}

// identity is how one device connects: its id, broker URL, credentials.
type identity struct {
	id, url, user, password string
	tc                      *tls.Config
}

func (i identity) connect(clientID string) (paho.Client, error) {
	return connect(i.url, clientID, i.user, i.password, i.tc)
}

// checkIsolation: while the victim pays and is answered, the spies
// (devices with identities of their own; the first one also pays as
// itself) subscribed to the victim's replies and to wildcards read
// nothing; a request a spy publishes on the victim's request topic never
// reaches Kafka or the ledger, and a reply it forges on the victim's reply
// topic never reaches the victim.
func checkIsolation(t *testing.T, kafkaAddr, ledger string, victim identity, spies ...identity) {
	t.Helper()
	// Client ids of their own: a device's id is its identity, not its
	// client id, and devicesim's devices use theirs.
	v := newAuthedDevice(t, victim, "victim-"+victim.id)
	eavesdropped := make(chan string, 64)
	var first *authedDevice
	for _, spy := range spies {
		d := newAuthedDevice(t, spy, "spy-"+spy.id)
		if first == nil {
			first = d
		}
		for _, filter := range []string{"payment/response/" + victim.id, "payment/response/+", "payment/#", "#"} {
			d.c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
				if m.Topic() != "payment/response/"+spy.id {
					eavesdropped <- m.Topic()
				}
			}).WaitTimeout(5 * time.Second)
		}
	}
	v.publish(t, "payment/request/"+victim.id, `{"request_id":"v-1","amount_minor":100,"currency":"EUR"}`)
	if r := v.await(t, "v-1"); r.Status != transcoder.StatusApproved {
		t.Errorf("the victim's own request: %+v", r)
	}
	// The spy's own reply comes after the victim's on the same bridge:
	// had a spy been sent the victim's reply, it would be here by now.
	first.publish(t, "payment/request/"+first.id, `{"request_id":"s-1","amount_minor":100,"currency":"EUR"}`)
	first.await(t, "s-1")
	for len(eavesdropped) > 0 {
		t.Errorf("a device read %s", <-eavesdropped)
	}

	// Brokers close the connection of a client whose publish is denied (or
	// drop the message); either way the token completes once the broker
	// decided.
	for _, spy := range spies {
		for _, forged := range [][2]string{
			{"payment/request/" + victim.id, `{"request_id":"forged-` + spy.id + `","amount_minor":99999,"currency":"EUR"}`},
			{"payment/response/" + victim.id, `{"request_id":"v-2","message_id":"forged","status":"APPROVED"}`},
		} {
			c, err := spy.connect(spy.id + "-forger")
			if err != nil {
				t.Fatalf("%s: %v", spy.id, err)
			}
			c.Publish(forged[0], 1, false, forged[1]).WaitTimeout(10 * time.Second)
			c.Disconnect(0)
		}
	}
	// The victim pays v-2: its only reply is the bridge's, not the forged one.
	v.publish(t, "payment/request/"+victim.id, `{"request_id":"v-2","amount_minor":100,"currency":"EUR"}`)
	if r := v.await(t, "v-2"); r.MessageID == "forged" {
		t.Errorf("the victim received a forged reply: %+v", r)
	}
	for _, m := range topicRecords(t, kafkaAddr, "edgebridge.payment.requests") {
		if bytes.Contains(m.Value, []byte("forged")) {
			t.Errorf("a forged request reached Kafka: key %s", m.Key)
		}
	}
	if raw, err := os.ReadFile(ledger); err != nil || bytes.Contains(raw, []byte("forged")) {
		t.Errorf("ledger: %v; forged entry present: %v", err, bytes.Contains(raw, []byte("forged")))
	}
}

// TestDeviceIdentityOnEmbedded: the embedded broker enforces the same
// rules. With a Mosquitto password file (mosquitto_passwd) and a TLS
// listener, then with a listener that requires client certificates (CN =
// device id): authenticated devices are all answered over TLS; a wrong
// password, no credentials, an untrusted server CA, a client certificate
// from another CA and plain TCP to the TLS port are refused; and no device
// reads another's replies, pays as another or forges another's replies.
// The bridge's own account is generated at start and never written.
func TestDeviceIdentityOnEmbedded(t *testing.T) {
	passwords := map[string]string{}
	for i := 1; i <= 5; i++ {
		passwords[fmt.Sprintf("dev-%04d", i)] = fmt.Sprintf("device-secret-%d", i)
	}
	s := startSite(t, passwords) // only for its CAs, certificates and password file
	kafkaAddr := kafkaBroker(t)
	ledger := filepath.Join(t.TempDir(), "ledger.jsonl")
	pay := startPaymentd(t, freeAddr(t), ledger)
	dataDir := t.TempDir()
	a := freeAddrs(t, 2)
	plainAddr, tlsAddr := a[0], a[1]
	tlsURL := "ssl://" + tlsAddr
	run := func(extra string) *bridgeProc {
		cfg, admin := writeBridgeConfig(t, bridgeOpts{mqtt: "embedded", kafka: kafkaAddr, backend: pay.addr,
			kafkaExtra: "  data_dir: " + dataDir + "\n",
			mqttExtra: fmt.Sprintf("  embedded_listen: %s\n  embedded_auth: {password_file: %s}\n  embedded_tls: {listen: %s, cert_file: %s, key_file: %s%s}\n",
				plainAddr, filepath.Join(s.dir, "passwd"), tlsAddr, filepath.Join(s.dir, "server.pem"), filepath.Join(s.dir, "server.key"), extra)})
		return startBridge(t, cfg, admin)
	}
	ctx := withTimeout(t, 3*time.Minute)

	// Passwords over TLS.
	b := run("")
	res := <-runDevices(ctx, devicesim.Config{Broker: tlsURL, Devices: 5, Requests: 50, Outstanding: 2,
		Connect: func(id string) devicesim.Conn {
			return devicesim.Conn{Username: id, Password: passwords[id], TLS: s.tlsFor(t, nil, "")}
		}})
	if res.Replied != 250 || len(res.Missing) > 0 {
		t.Fatalf("devices with passwords: %d of 250 replied, missing %.300v", res.Replied, res.Missing)
	}
	refused := map[string]identity{
		"a wrong password":          {"dev-0001", tlsURL, "dev-0001", "not-the-password", s.tlsFor(t, nil, "")},
		"no credentials (plain)":    {"anon", "tcp://" + plainAddr, "", "", nil},
		"the bridge's name guessed": {"edgebridge", "tcp://" + plainAddr, "edgebridge", "edgebridge", nil},
		"plain TCP to the TLS port": {"dev-0001", "tcp://" + tlsAddr, "dev-0001", passwords["dev-0001"], nil},
		"an untrusted server CA":    {"dev-0001", tlsURL, "dev-0001", passwords["dev-0001"], untrusting(t)},
	}
	for what, who := range refused {
		if c, err := who.connect("refused-" + who.id); err == nil {
			c.Disconnect(0)
			t.Errorf("%s connected", what)
		}
	}
	checkIsolation(t, kafkaAddr, ledger,
		identity{"dev-0002", tlsURL, "dev-0002", passwords["dev-0002"], s.tlsFor(t, nil, "")},
		identity{"dev-0001", tlsURL, "dev-0001", passwords["dev-0001"], s.tlsFor(t, nil, "")})
	if err := b.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	logs := b.Output()

	// Client certificates: the CN is the device id.
	b = run(", client_ca_file: " + filepath.Join(s.dir, "device-ca.pem"))
	res = <-runDevices(ctx, devicesim.Config{Broker: tlsURL, Devices: 5, Requests: 50, Outstanding: 2, DevicePrefix: "cert",
		Connect: func(id string) devicesim.Conn { return devicesim.Conn{TLS: s.tlsFor(t, s.deviceCA, id)} }})
	if res.Replied != 250 || len(res.Missing) > 0 {
		t.Fatalf("devices with certificates: %d of 250 replied, missing %.300v", res.Replied, res.Missing)
	}
	otherCA, err := testpki.NewCA("somebody else's CA")
	if err != nil {
		t.Fatal(err)
	}
	for what, who := range map[string]identity{
		"a certificate from another CA":   {"cert-0001", tlsURL, "", "", s.tlsFor(t, otherCA, "cert-0001")},
		"no certificate":                  {"cert-0001", tlsURL, "cert-0001", "", s.tlsFor(t, nil, "")},
		"a certificate naming the bridge": {"edgebridge", tlsURL, "", "", s.tlsFor(t, s.deviceCA, "edgebridge")},
	} {
		if c, err := who.connect("refused-" + who.id); err == nil {
			c.Disconnect(0)
			t.Errorf("%s connected", what)
		}
	}
	checkIsolation(t, kafkaAddr, ledger,
		identity{"cert-0002", tlsURL, "", "", s.tlsFor(t, s.deviceCA, "cert-0002")},
		identity{"cert-0001", tlsURL, "", "", s.tlsFor(t, s.deviceCA, "cert-0001")},
		identity{"stranger", tlsURL, "", "", s.tlsFor(t, s.deviceCA, "stranger")})
	if err := b.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	for _, secret := range passwords {
		if strings.Contains(logs+b.Output(), secret) {
			t.Errorf("the bridge's log holds a password")
		}
	}
}

// untrusting is a client TLS configuration that trusts only a CA nobody used.
func untrusting(t *testing.T) *tls.Config {
	t.Helper()
	ca, err := testpki.NewCA("unrelated CA")
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}
	tc.RootCAs.AppendCertsFromPEM(ca.PEM)
	return tc
}

// TestMQTTLoginRefusedThenFixed: a bridge whose MQTT password Mosquitto
// refuses, or that does not trust Mosquitto's certificate, is unready and
// says which (in /readyz and edgebridge_broker_problem); fixing the
// password file is picked up at the next connection attempt, no restart.
func TestMQTTLoginRefusedThenFixed(t *testing.T) {
	passwords := map[string]string{"edgebridge": "bridge-secret-2c81", "dev-0001": "device-secret-1"}
	s := startSite(t, passwords)
	kafkaAddr := kafkaBroker(t)
	pay := startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
	pwFile := filepath.Join(t.TempDir(), "mqtt-password")
	if err := os.WriteFile(pwFile, []byte("wrong-bridge-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	otherCA, err := testpki.NewCA("not the broker's CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCAFile, err := otherCA.WriteCA(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, caFile, want, reason string }{
		{"untrusted broker certificate", otherCAFile, "mqtt: TLS failed (mqtt.tls)", "tls"},
		{"wrong password", s.serverCAFile, "mqtt: login refused", "auth"},
	} {
		cfg, admin := writeBridgeConfig(t, bridgeOpts{mqtt: s.passwordURL, kafka: kafkaAddr, backend: pay.addr,
			mqttExtra: fmt.Sprintf("  username: edgebridge\n  password_file: %s\n  tls: {enabled: true, ca_file: %s}\n", pwFile, c.caFile)})
		b := &bridgeProc{&proc.Bridge{Process: start(t, bins.edgebridge, "run", "-config", cfg), Admin: admin}}
		waitFor(t, 30*time.Second, c.name+" named by /readyz", func() bool {
			code, body := b.Readyz()
			return code == 503 && strings.Contains(body, c.want)
		})
		_, body := b.Readyz()
		t.Logf("%s: /readyz: %s", c.name, strings.TrimSpace(body))
		if v, err := b.Metric(`edgebridge_broker_problem{broker="mqtt",reason="` + c.reason + `"}`); err != nil || v != 1 {
			t.Errorf("%s: edgebridge_broker_problem{broker=mqtt,reason=%s} = %v (%v), want 1", c.name, c.reason, v, err)
		}
		if c.reason == "tls" {
			if err := b.Stop(30 * time.Second); err != nil {
				t.Error(err)
			}
			continue
		}
		// The operator fixes the password file; the next attempt logs in.
		if err := os.WriteFile(pwFile, []byte(passwords["edgebridge"]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Minute, "ready after the password was fixed", b.Ready)
		dev := newAuthedDevice(t, identity{"dev-0001", s.passwordURL, "dev-0001", passwords["dev-0001"], s.tlsFor(t, nil, "")}, "dev-0001")
		dev.publish(t, "payment/request/dev-0001", `{"request_id":"r-1","amount_minor":100,"currency":"EUR"}`)
		dev.await(t, "r-1")
		if err := b.Stop(30 * time.Second); err != nil {
			t.Error(err)
		}
		if out := b.Output(); strings.Contains(out, passwords["edgebridge"]) || strings.Contains(out, "wrong-bridge-password") {
			t.Error("the bridge logged its MQTT password")
		}
	}
}
