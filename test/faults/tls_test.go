package faults

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/grpcout"
)

// TLS with a bearer token, configured the way an operator does (CA and
// token files): 2,000 requests over the encrypted, authenticated hop.
func TestTLSAndToken(t *testing.T) {
	leakCheck(t)
	dir := t.TempDir()
	cert, caFile := writeCert(t, dir, "ca.pem")
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, rigOpts{
		serverOpts: append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))}, backend.TokenAuth("s3cret")...),
		tweak: func(c *config.Config) {
			c.Backend.TLS = config.TLS{Enabled: true, CAFile: caFile}
			c.Backend.TokenFile = token
		},
	})
	r.startBridge()
	r.check(r.run(0, nil), true)
}

// A backend whose certificate the bridge does not trust: the bridge is not
// ready and says why; attempts wait the maximum backoff, not a hot loop.
func TestUntrustedBackendMakesBridgeUnready(t *testing.T) {
	leakCheck(t)
	dir := t.TempDir()
	cert, _ := writeCert(t, dir, "served.pem")
	_, otherCA := writeCert(t, dir, "other.pem")
	r := newRig(t, rigOpts{
		serverOpts: []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))},
		tweak:      func(c *config.Config) { c.Backend.TLS = config.TLS{Enabled: true, CAFile: otherCA} },
	})
	r.startBridgeUnready()
	var why []string
	waitFor(t, "unready with the TLS cause", 10*time.Second, func() bool {
		var ok bool
		ok, why = r.bridge.Ready()
		return !ok && strings.Contains(strings.Join(why, "; "), "tls")
	})
	t.Logf("/readyz reasons: %v", why)
	first := r.events.waitEvent(t, "a tls failure", time.Time{}, 10*time.Second, down(grpcout.ReasonTLS))
	second := r.events.waitEvent(t, "a second tls failure", first.At.Add(time.Millisecond), 10*time.Second, down(grpcout.ReasonTLS))
	if gap := second.At.Sub(first.At); gap < r.cfg.Backend.Reconnect.Max*8/10 {
		t.Errorf("TLS failures %s apart, want the maximum backoff %s", gap, r.cfg.Backend.Reconnect.Max)
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 to dir/name and
// returns it with the path (it is its own CA).
func writeCert(t *testing.T, dir, name string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "edgebridge test backend"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, path
}
