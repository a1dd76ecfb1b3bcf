package tlsfiles_test

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/internal/tlsfiles"
	"github.com/edgebridge/edgebridge/siteca"
)

// A server with a CRL refuses the client certificates it lists, from the
// next handshake after the file changed; without a CRL file nothing is
// revoked; a CRL another CA signed is not applied.
func TestCRLRefusesRevokedCertificates(t *testing.T) {
	dir := t.TempDir()
	site, _, err := siteca.Ensure(siteca.Config{Dir: dir, Names: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	reg := devices.Open(dir)
	client := func(id string) *tls.Config {
		certPEM, keyPEM := must2(reg.IssueCertificate(id, nil, time.Hour))
		pair := must(tls.X509KeyPair(certPEM, keyPEM))
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(site.CAPEM())
		return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	a, b := client("dev-a"), client("dev-b")
	cert, key := site.ServerFiles()
	crlFile := filepath.Join(dir, devices.CRLFile)
	tc := must(tlsfiles.Files{CAFile: site.CAFile(), CertFile: cert, KeyFile: key, CRLFile: crlFile}.Server())
	addr, seen := serve(t, tc)
	handshake := func(c *tls.Config) string {
		_ = dial(addr, c)
		return <-seen
	}
	if got := handshake(a); got != "dev-a" {
		t.Fatalf("no CRL yet: %s", got)
	}
	must(reg.Remove("dev-a"))
	if got := handshake(a); got == "dev-a" {
		t.Fatal("a revoked certificate completed the handshake")
	}
	if got := handshake(b); got != "dev-b" {
		t.Fatalf("a certificate not revoked: %s", got)
	}
	crl := tlsfiles.NewCRL(crlFile, site.CAFile())
	if crl.Err() != nil {
		t.Fatal(crl.Err())
	}

	// A CRL signed by another CA is not applied.
	other := t.TempDir()
	if _, _, err := siteca.Ensure(siteca.Config{Dir: other, Names: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	must2(devices.Open(other).IssueCertificate("dev-x", nil, time.Hour))
	must(devices.Open(other).Remove("dev-x"))
	foreign := tlsfiles.NewCRL(filepath.Join(other, devices.CRLFile), site.CAFile())
	if foreign.Err() == nil {
		t.Fatal("a CRL from another CA was applied")
	}
	if none := tlsfiles.NewCRL(filepath.Join(t.TempDir(), "none.pem"), site.CAFile()); none.Err() != nil {
		t.Fatalf("a missing CRL file: %v", none.Err())
	}
}

func must2[A, B any](a A, b B, err error) (A, B) {
	if err != nil {
		panic(err)
	}
	return a, b
}
