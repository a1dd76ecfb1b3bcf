package siteca_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/siteca"
)

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func cert(t *testing.T, raw []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatalf("not PEM: %q", raw)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pool(pemBytes []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pemBytes)
	return p
}

// The first Ensure makes the CA and the server certificate; later ones
// reuse both, byte for byte; the keys are readable by the owner only.
func TestEnsureMakesOnceThenReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "site")
	cfg := siteca.Config{Dir: dir, Names: []string{"pos.example.site", "192.0.2.10"}}
	s, made, err := siteca.Ensure(cfg)
	if err != nil || made != "ca" {
		t.Fatalf("first Ensure: made %q, %v; want the CA made", made, err)
	}
	caPEM, serverPEM := read(t, dir, siteca.CAFile), read(t, dir, siteca.ServerFile)
	if !bytes.Equal(s.CAPEM(), caPEM) {
		t.Fatal("CAPEM differs from ca.pem")
	}
	// The CA's key is the owner's only; the server's key and the directory
	// the owner's group may read (a site's Mosquitto in another container).
	for k, want := range map[string]os.FileMode{siteca.CAKeyFile: 0o600, siteca.ServerKey: 0o640, ".": 0o750} {
		if fi, err := os.Stat(filepath.Join(dir, k)); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, mode %v; want %v", k, err, fi.Mode().Perm(), want)
		}
	}
	for range 2 {
		if _, made, err := siteca.Ensure(cfg); err != nil || made != "" {
			t.Fatalf("Ensure again: made %q, %v; want nothing made", made, err)
		}
	}
	if !bytes.Equal(read(t, dir, siteca.CAFile), caPEM) || !bytes.Equal(read(t, dir, siteca.ServerFile), serverPEM) {
		t.Fatal("a later Ensure rewrote the CA or the server certificate")
	}
}

// The server certificate names what devices dial, is for server
// authentication and verifies against the site CA.
func TestServerCertificate(t *testing.T) {
	dir := t.TempDir()
	s, _, err := siteca.Ensure(siteca.Config{Dir: dir, Names: []string{"pos.example.site", "192.0.2.10", "2001:db8::1"}})
	if err != nil {
		t.Fatal(err)
	}
	ca, srv := cert(t, s.CAPEM()), cert(t, read(t, dir, siteca.ServerFile))
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 || !ca.MaxPathLenZero {
		t.Errorf("CA: IsCA %v, key usage %v, path length zero %v", ca.IsCA, ca.KeyUsage, ca.MaxPathLenZero)
	}
	if srv.IsCA || len(srv.ExtKeyUsage) != 1 || srv.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("server: IsCA %v, ext key usage %v", srv.IsCA, srv.ExtKeyUsage)
	}
	for _, name := range []string{"pos.example.site", "192.0.2.10", "2001:db8::1"} {
		if _, err := srv.Verify(x509.VerifyOptions{DNSName: name, Roots: pool(s.CAPEM())}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if _, err := srv.Verify(x509.VerifyOptions{DNSName: "edgebridge-mqtt", Roots: pool(s.CAPEM())}); err == nil {
		t.Error("the certificate verifies for a name it was not given")
	}
	if life := srv.NotAfter.Sub(srv.NotBefore); life < 396*24*time.Hour || life > 398*24*time.Hour {
		t.Errorf("server certificate lives %s, want 397 days", life)
	}
	if !s.ServerNotAfter().Equal(srv.NotAfter) {
		t.Errorf("ServerNotAfter %s, certificate %s", s.ServerNotAfter(), srv.NotAfter)
	}
}

// A server certificate within RenewBefore of its expiry, or for other
// names, is issued again; the CA never is.
func TestRenewal(t *testing.T) {
	dir := t.TempDir()
	cfg := siteca.Config{Dir: dir, Names: []string{"192.0.2.10"}, ServerValidity: 10 * 24 * time.Hour, RenewBefore: 30 * 24 * time.Hour}
	if _, _, err := siteca.Ensure(cfg); err != nil {
		t.Fatal(err)
	}
	caPEM, first := read(t, dir, siteca.CAFile), cert(t, read(t, dir, siteca.ServerFile))
	if _, made, err := siteca.Ensure(cfg); err != nil || made != "renewed" {
		t.Fatalf("Ensure of an expiring certificate: made %q, %v; want renewed", made, err)
	}
	if second := cert(t, read(t, dir, siteca.ServerFile)); second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("not renewed")
	}
	cfg.ServerValidity, cfg.Names = 0, []string{"192.0.2.10", "pos.example.site"}
	if _, made, err := siteca.Ensure(cfg); err != nil || made != "renewed" {
		t.Fatalf("Ensure with a new name: made %q, %v; want renewed", made, err)
	}
	if got := cert(t, read(t, dir, siteca.ServerFile)); len(got.DNSNames) != 1 || got.DNSNames[0] != "pos.example.site" {
		t.Fatalf("renewed certificate names %v", got.DNSNames)
	}
	if !bytes.Equal(read(t, dir, siteca.CAFile), caPEM) {
		t.Fatal("renewal re-created the CA")
	}
}

// A CA whose key is gone is not replaced by a new one (every device
// trusts the old): Ensure refuses until the key is restored.
func TestCANeverRecreated(t *testing.T) {
	dir := t.TempDir()
	cfg := siteca.Config{Dir: dir, Names: []string{"192.0.2.10"}}
	if _, _, err := siteca.Ensure(cfg); err != nil {
		t.Fatal(err)
	}
	caPEM, key := read(t, dir, siteca.CAFile), read(t, dir, siteca.CAKeyFile)
	os.Remove(filepath.Join(dir, siteca.CAKeyFile))
	if _, _, err := siteca.Ensure(cfg); err == nil {
		t.Fatal("Ensure without ca.key: no error")
	}
	if !bytes.Equal(read(t, dir, siteca.CAFile), caPEM) {
		t.Fatal("ca.pem was replaced")
	}
	if err := os.WriteFile(filepath.Join(dir, siteca.CAKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, made, err := siteca.Ensure(cfg); err != nil || made != "" {
		t.Fatalf("with the key restored: made %q, %v", made, err)
	}
}

// Processes starting together make one CA between them.
func TestConcurrentEnsureMakesOneCA(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	cas := make([][]byte, 8)
	for i := range cas {
		wg.Go(func() {
			s, _, err := siteca.Ensure(siteca.Config{Dir: dir, Names: []string{"192.0.2.10"}})
			if err != nil {
				t.Error(err)
				return
			}
			cas[i] = s.CAPEM()
		})
	}
	wg.Wait()
	for i := range cas {
		if !bytes.Equal(cas[i], cas[0]) {
			t.Fatal("concurrent Ensure calls made different CAs")
		}
	}
}

// Device certificates: issued with a new key or from a CSR (whose key
// stays on the device), named by the device id whatever the CSR asked,
// for client authentication, verifying against the site CA.
func TestDeviceCertificates(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := siteca.Ensure(siteca.Config{Dir: dir, Names: []string{"192.0.2.10"}}); err != nil {
		t.Fatal(err)
	}
	s, err := siteca.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(raw []byte, id string) {
		t.Helper()
		c := cert(t, raw)
		if c.Subject.CommonName != id {
			t.Errorf("common name %q, want %q", c.Subject.CommonName, id)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool(s.CAPEM()), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("verify %s: %v", id, err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool(s.CAPEM()), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
			t.Errorf("%s's certificate is good for a server", id)
		}
	}
	certPEM, keyPEM, err := s.Issue("term-0001", 0)
	if err != nil || len(keyPEM) == 0 {
		t.Fatalf("Issue: %v", err)
	}
	verify(certPEM, "term-0001")

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "someone-else"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	signed, err := s.SignCSR("term-0002", csr, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	verify(signed, "term-0002")
	if c := cert(t, signed); !c.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Error("the signed certificate is not for the CSR's key")
	}
	der[len(der)-1] ^= 0xff // break the CSR's signature
	if _, err := s.SignCSR("term-0003", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0); err == nil {
		t.Error("a CSR with a broken signature was signed")
	}
	if _, err := s.SignCSR("term-0003", []byte("not pem"), 0); err == nil {
		t.Error("garbage was signed as a CSR")
	}
}

// Ids that would break a password file line, a topic level or a
// certificate name are refused.
func TestInvalidDeviceIDs(t *testing.T) {
	for _, id := range []string{"", "a/b", "a:b", "a b", "+", "#", "dev\n", "-lead", "ü", string(make([]byte, 65))} {
		if err := siteca.ValidDeviceID(id); err == nil {
			t.Errorf("device id %q accepted", id)
		}
	}
	for _, id := range []string{"term-0001", "T1", "pos_7.a"} {
		if err := siteca.ValidDeviceID(id); err != nil {
			t.Errorf("device id %q refused: %v", id, err)
		}
	}
	dir := t.TempDir()
	s, _, err := siteca.Ensure(siteca.Config{Dir: dir, Names: []string{"192.0.2.10"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Issue("a/b", 0); err == nil {
		t.Error("Issue for an invalid id")
	}
}

// Load finds no CA where none was made (and makes none).
func TestLoadWithoutCA(t *testing.T) {
	dir := t.TempDir()
	if _, err := siteca.Load(dir); err == nil {
		t.Fatal("Load of an empty directory: no error")
	}
	if _, err := os.Stat(filepath.Join(dir, siteca.CAFile)); err == nil {
		t.Fatal("Load made a CA")
	}
}
