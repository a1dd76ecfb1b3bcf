package deploy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgebridge/edgebridge/kit/devicesim"
)

// siteUnderTest is a running deployment's MQTT side as devices and an
// operator see it: the bridge's container (edgebridge site|device through
// podman exec, as `docker compose exec` or `kubectl exec` would run them),
// its data volume, and the host ports of its two TLS listeners.
type siteUnderTest struct {
	container, volume string
	tlsPort, certPort int
}

// edgebridge runs the edgebridge command in the bridge's container, with
// the image's $EDGEBRIDGE_CONFIG: no -config flag.
func (s siteUnderTest) edgebridge(t *testing.T, args ...string) string {
	t.Helper()
	return podman(t, append([]string{"exec", s.container, "edgebridge"}, args...)...)
}

// ca is the site CA `edgebridge site ca` prints.
func (s siteUnderTest) ca(t *testing.T) (pem string, pool *x509.CertPool) {
	t.Helper()
	pem = s.edgebridge(t, "site", "ca")
	pool = x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pem)) {
		t.Fatalf("edgebridge site ca printed no certificate: %q", pem)
	}
	return pem, pool
}

// addDevice provisions id with `edgebridge device add` and returns the
// password it printed.
func (s siteUnderTest) addDevice(t *testing.T, id string) string {
	t.Helper()
	out := s.edgebridge(t, "device", "add", id)
	_, pw, ok := strings.Cut(strings.TrimSpace(out), "(shown only now): ")
	if !ok || pw == "" {
		t.Fatalf("device add %s printed %q, want its password", id, out)
	}
	return pw
}

// pay provisions devices prefix-0001… with passwords, sends requests
// from each over TLS on the password port, and fails t unless every
// request is answered.
func (s siteUnderTest) pay(t *testing.T, prefix string, devices, requests int) {
	t.Helper()
	_, pool := s.ca(t)
	cfg := devicesim.Config{Broker: "ssl://127.0.0.1:" + strconv.Itoa(s.tlsPort), Devices: devices, Requests: requests, DevicePrefix: prefix}
	passwords := map[string]string{}
	for i := range devices {
		id := cfg.DeviceID(i + 1) // devicesim counts from 1
		passwords[id] = s.addDevice(t, id)
	}
	cfg.Connect = func(id string) devicesim.Conn {
		return devicesim.Conn{Username: id, Password: passwords[id], TLS: &tls.Config{RootCAs: pool}}
	}
	checkRun(t, cfg, devices*requests)
}

// checkRun runs the simulated devices of cfg and fails t unless all n
// requests got their reply.
func checkRun(t *testing.T, cfg devicesim.Config, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := devicesim.Run(ctx, cfg, nil)
	if err != nil {
		t.Fatalf("devices %s-…: %v", cfg.DevicePrefix, err)
	}
	if r.Sent != n || r.Replied != n || len(r.Missing) > 0 {
		t.Fatalf("devices %s-…: sent %d, replied %d of %d; missing %v", cfg.DevicePrefix, r.Sent, r.Replied, n, r.Missing[:min(len(r.Missing), 10)])
	}
}

// dial connects one MQTT client (no reconnects) and returns it with a
// channel that receives when its connection is lost.
func dial(broker, user, password string, tc *tls.Config) (paho.Client, <-chan error, error) {
	lost := make(chan error, 1)
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("probe-%d", time.Now().UnixNano())).
		SetUsername(user).SetPassword(password).SetTLSConfig(tc).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetProtocolVersion(4).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		return nil, nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, nil, err
	}
	return c, lost, nil
}

// checkSiteSecurity: the site refuses strangers and provisioning works
// through the commands, with no restart:
//   - a client without a login (over TLS), with a wrong password, or in
//     clear text on the TLS port is refused;
//   - a device connected with its password is disconnected once `device
//     remove` removes it, and its next login is refused;
//   - a device with a certificate from `device cert` is answered on the
//     certificate port, and `device list` shows it.
func checkSiteSecurity(t *testing.T, s siteUnderTest) {
	t.Helper()
	_, pool := s.ca(t)
	tlsURL := "ssl://127.0.0.1:" + strconv.Itoa(s.tlsPort)
	tc := &tls.Config{RootCAs: pool}
	pw := s.addDevice(t, "gone-0000")
	for name, try := range map[string]func() error{
		"anonymous over TLS": func() error { _, _, err := dial(tlsURL, "", "", tc); return err },
		"wrong password":     func() error { _, _, err := dial(tlsURL, "gone-0000", pw+"x", tc); return err },
		"clear text": func() error {
			_, _, err := dial("tcp://127.0.0.1:"+strconv.Itoa(s.tlsPort), "gone-0000", pw, nil)
			return err
		},
		"untrusted server": func() error { _, _, err := dial(tlsURL, "gone-0000", pw, &tls.Config{}); return err },
	} {
		if err := try(); err == nil {
			t.Errorf("%s: connected, want refused", name)
		} else {
			t.Logf("%s: refused: %v", name, err)
		}
	}

	c, lost, err := dial(tlsURL, "gone-0000", pw, tc)
	if err != nil {
		t.Fatalf("device gone-0000 with its password: %v", err)
	}
	defer c.Disconnect(0)
	s.edgebridge(t, "device", "remove", "gone-0000")
	select {
	case err := <-lost:
		t.Logf("removed device's connection closed: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("device remove: the device's open connection is still up after 30s")
	}
	if _, _, err := dial(tlsURL, "gone-0000", pw, tc); err == nil {
		t.Error("device remove: the removed device logged in again")
	}

	// A certificate, written to the data volume and read from the host.
	s.edgebridge(t, "device", "cert", "card-0001", "-out", "/data/test-certs")
	dir := filepath.Join(strings.TrimSpace(podman(t, "volume", "inspect", "--format", "{{.Mountpoint}}", s.volume)), "test-certs")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "card-0001.pem"), filepath.Join(dir, "card-0001.key"))
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "ca.pem")); err != nil || !pool.AppendCertsFromPEM(raw) {
		t.Fatalf("device cert wrote no ca.pem: %v", err)
	}
	certURL := "ssl://127.0.0.1:" + strconv.Itoa(s.certPort)
	if _, _, err := dial(certURL, "", "", tc); err == nil {
		t.Error("certificate port: a client without a certificate connected")
	}
	checkRun(t, devicesim.Config{Broker: certURL, Devices: 1, Requests: 10, DevicePrefix: "card",
		Connect: func(string) devicesim.Conn {
			return devicesim.Conn{TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}
		}}, 10)
	if list := s.edgebridge(t, "device", "list"); !strings.Contains(list, "card-0001") || strings.Contains(list, "gone-0000") {
		t.Errorf("device list:\n%s\nwant card-0001 and not the removed gone-0000", list)
	}
}
