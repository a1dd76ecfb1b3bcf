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
	"github.com/edgebridge/edgebridge/internal/devicesim"
	"github.com/edgebridge/edgebridge/internal/testpki"
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
	pwAddr, certAddr := freeAddr(t), freeAddr(t)
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
	c := paho.NewClient(paho.NewClientOptions().AddBroker(broker).SetClientID(clientID).SetCleanSession(true).
		SetUsername(user).SetPassword(password).SetTLSConfig(tc).SetConnectTimeout(5 * time.Second))
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
	victim := newAuthedDevice(t, s.passwordURL, "dev-0002", "dev-0002", passwords["dev-0002"], s.tlsFor(t, nil, ""))
	attacker := newAuthedDevice(t, s.passwordURL, "dev-0001", "dev-0001", passwords["dev-0001"], s.tlsFor(t, nil, ""))
	stranger := newAuthedDevice(t, s.certURL, "stranger", "stranger", "", s.tlsFor(t, s.deviceCA, "stranger"))
	eavesdropped := make(chan string, 16)
	for _, spy := range []*authedDevice{attacker, stranger} {
		for _, filter := range []string{"payment/response/dev-0002", "payment/response/+", "payment/#", "#"} {
			spy.c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { eavesdropped <- m.Topic() }).WaitTimeout(5 * time.Second)
		}
	}
	victim.publish(t, "payment/request/dev-0002", `{"request_id":"b-1","amount_minor":100,"currency":"EUR"}`)
	if r := victim.await(t, "b-1"); r.Status != transcoder.StatusApproved {
		t.Errorf("B's own request: %+v", r)
	}
	// A's own reply comes after B's on the same bridge: had a spy been
	// sent B's reply, it would be here by now.
	attacker.publish(t, "payment/request/dev-0001", `{"request_id":"a-1","amount_minor":100,"currency":"EUR"}`)
	attacker.await(t, "a-1")
	for len(eavesdropped) > 0 {
		if topic := <-eavesdropped; topic != "payment/response/dev-0001" {
			t.Errorf("a device read %s", topic)
		}
	}

	// Mosquitto 2.0 closes the connection of a client whose publish the
	// ACL denies; either way the token completes once the broker decided.
	for _, who := range []struct {
		id, user, pw, url string
		tc                *tls.Config
	}{
		{"dev-0001", "dev-0001", passwords["dev-0001"], s.passwordURL, s.tlsFor(t, nil, "")},
		{"stranger", "", "", s.certURL, s.tlsFor(t, s.deviceCA, "stranger")},
	} {
		for _, forged := range [][2]string{
			{"payment/request/dev-0002", `{"request_id":"forged-` + who.id + `","amount_minor":99999,"currency":"EUR"}`},
			{"payment/response/dev-0002", `{"request_id":"b-2","message_id":"forged","status":"APPROVED"}`},
		} {
			c, err := connect(who.url, who.id+"-forger", who.user, who.pw, who.tc)
			if err != nil {
				t.Fatalf("%s: %v", who.id, err)
			}
			c.Publish(forged[0], 1, false, forged[1]).WaitTimeout(10 * time.Second)
			c.Disconnect(0)
		}
	}
	// B pays b-2: its only reply is the bridge's, not the forged APPROVED.
	victim.publish(t, "payment/request/dev-0002", `{"request_id":"b-2","amount_minor":100,"currency":"EUR"}`)
	if r := victim.await(t, "b-2"); r.MessageID == "forged" {
		t.Errorf("B received a forged reply: %+v", r)
	}
	for _, m := range topicRecords(t, kafkaAddr, "edgebridge.payment.requests") {
		if bytes.Contains(m.Value, []byte("forged")) {
			t.Errorf("a forged request reached Kafka: key %s", m.Key)
		}
	}
	if raw, err := os.ReadFile(ledger); err != nil || bytes.Contains(raw, []byte("forged")) {
		t.Errorf("ledger: %v; forged entry present: %v", err, bytes.Contains(raw, []byte("forged")))
	}

	if err := b.stop(t, 30*time.Second); err != nil {
		t.Error(err)
	}
	logs := b.out.String()

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
	if err := b.stop(t, 30*time.Second); err != nil {
		t.Error(err)
	}
	for _, secret := range passwords {
		if strings.Contains(logs+b.out.String(), secret) {
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

func newAuthedDevice(t *testing.T, broker, clientID, user, password string, tc *tls.Config) *authedDevice {
	t.Helper()
	c, err := connect(broker, clientID, user, password, tc)
	if err != nil {
		t.Fatalf("device %s: %v", clientID, err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	d := &authedDevice{id: clientID, c: c, replies: make(chan transcoder.Reply, 16)}
	if user != "" {
		c.Subscribe("payment/response/"+user, 1, func(_ paho.Client, m paho.Message) {
			var r transcoder.Reply
			if json.Unmarshal(m.Payload(), &r) == nil {
				d.replies <- r
			}
		}).WaitTimeout(5 * time.Second)
	}
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
