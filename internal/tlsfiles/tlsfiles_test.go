package tlsfiles_test

import (
	"crypto/tls"
	"os"
	"strings"
	"testing"

	"github.com/edgebridge/edgebridge/internal/tlsfiles"
	"github.com/edgebridge/edgebridge/kit/testpki"
)

// serve accepts TLS connections with tc and completes their handshakes,
// reporting each client certificate's CN (or the handshake error).
func serve(t *testing.T, tc *tls.Config) (addr string, seen chan string) {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	seen = make(chan string, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if err := tc.Handshake(); err != nil {
				seen <- "error: " + err.Error()
			} else if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
				seen <- certs[0].Subject.CommonName
			} else {
				seen <- "no certificate"
			}
			tc.Close()
		}
	}()
	return l.Addr().String(), seen
}

func dial(addr string, tc *tls.Config) error {
	c, err := tls.Dial("tcp", addr, tc)
	if err != nil {
		return err
	}
	defer c.Close()
	// TLS 1.3: the server's verdict on the client certificate arrives
	// with the first read.
	_, err = c.Read(make([]byte, 1))
	if err != nil && strings.Contains(err.Error(), "EOF") {
		return nil
	}
	return err
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// Mutual TLS from files; each file rotated on disk is used from the next
// handshake on, by the configurations already built.
func TestRotationWithoutRebuild(t *testing.T) {
	dir := t.TempDir()
	ca1 := must(testpki.NewCA("ca-1"))
	ca2 := must(testpki.NewCA("ca-2"))
	caFile := must(ca1.WriteCA(dir, "ca"))
	srvCert, srvKey := write(t, dir, "server", ca1.Server, "server")
	cliCert, cliKey := write(t, dir, "client", ca1.Client, "term-1")

	server := must(tlsfiles.Files{CAFile: caFile, CertFile: srvCert, KeyFile: srvKey}.Server())
	client := must(tlsfiles.Files{CAFile: caFile, CertFile: cliCert, KeyFile: cliKey}.Client())
	addr, seen := serve(t, server)
	if err := dial(addr, client); err != nil {
		t.Fatalf("first handshake: %v", err)
	}
	if got := <-seen; got != "term-1" {
		t.Fatalf("server saw %q, want term-1", got)
	}

	// A client certificate from a CA the server does not trust: refused.
	other := t.TempDir()
	strCert, strKey := write(t, other, "client", ca2.Client, "stranger")
	stranger := must(tlsfiles.Files{CAFile: caFile, CertFile: strCert, KeyFile: strKey}.Client())
	if err := dial(addr, stranger); err == nil {
		t.Error("a client certificate from an unknown CA was accepted")
	}
	<-seen
	// No client certificate: refused.
	if err := dial(addr, must(tlsfiles.Files{CAFile: caFile}.Client())); err == nil {
		t.Error("a client without a certificate was accepted")
	}
	<-seen

	// Rotate the client's certificate: the same client config presents the new one.
	write(t, dir, "client", ca1.Client, "term-1-rotated")
	if err := dial(addr, client); err != nil {
		t.Fatalf("after rotating the client certificate: %v", err)
	}
	if got := <-seen; got != "term-1-rotated" {
		t.Errorf("server saw %q, want the rotated certificate", got)
	}

	// Move everything to a new CA: server certificate first (the client,
	// still trusting only ca-1, refuses it), then the CA bundle.
	write(t, dir, "server", ca2.Server, "server")
	if err := dial(addr, client); err == nil {
		t.Error("a server certificate from an untrusted CA was accepted")
	}
	<-seen
	os.WriteFile(caFile, append(append([]byte{}, ca1.PEM...), ca2.PEM...), 0o644)
	write(t, dir, "client", ca2.Client, "term-1-ca2")
	if err := dial(addr, client); err != nil {
		t.Fatalf("after moving to the new CA: %v", err)
	}
	if got := <-seen; got != "term-1-ca2" {
		t.Errorf("server saw %q, want term-1-ca2", got)
	}

	// A half-written certificate keeps the last good one in use.
	os.WriteFile(cliCert, []byte("-----BEGIN CERT"), 0o644)
	if err := dial(addr, client); err != nil {
		t.Errorf("with a broken certificate file the last good one should stay in use: %v", err)
	}
	<-seen
}

func TestMissingFilesAreErrorsAtOnce(t *testing.T) {
	if _, err := (tlsfiles.Files{CAFile: "/nonexistent/ca.pem"}).Client(); err == nil {
		t.Error("a missing CA file was accepted")
	}
	if _, err := (tlsfiles.Files{CertFile: "/nonexistent/c.pem", KeyFile: "/nonexistent/k.pem"}).Server(); err == nil {
		t.Error("a missing server certificate was accepted")
	}
	if _, err := (tlsfiles.Files{}).Server(); err == nil {
		t.Error("a server without a certificate was accepted")
	}
}

// write issues a certificate for cn and writes it and its key to dir.
func write(t *testing.T, dir, name string, issue func(string) ([]byte, []byte, error), cn string) (cert, key string) {
	t.Helper()
	c, k, err := issue(cn)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err = testpki.WritePair(dir, name, c, k)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}
