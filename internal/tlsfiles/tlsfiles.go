// Package tlsfiles builds TLS configurations from PEM files that are read
// again when they change: a rotated certificate, key or CA bundle is used
// from the next handshake on, without a restart, and connections already
// open keep theirs.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
)

// Files names the PEM files of one side of a TLS connection.
type Files struct {
	// CAFile: the CAs that sign the peer's certificate. Empty: the system
	// roots (client), or no client certificates asked for (server).
	CAFile string
	// CertFile and KeyFile: this side's certificate and key. A client
	// without them presents none.
	CertFile, KeyFile string
	// ServerName a client checks in the server's certificate. Empty: the
	// host it dialled.
	ServerName string
	// CRLFile (server, with CAFile): client certificates it lists are
	// refused (see CRL).
	CRLFile string
}

// Client returns a client configuration (TLS 1.2 or later) that verifies
// the server against CAFile and presents CertFile, both as they are on
// disk at each handshake. The files are read once here, so a missing or
// broken file is an error now rather than at the first connection.
func (f Files) Client() (*tls.Config, error) {
	w := &watched{files: f}
	if err := w.load(); err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if f.CertFile != "" {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return w.cert() }
	}
	if f.CAFile != "" {
		// The pool can change between handshakes, so the chain is verified
		// here, as crypto/tls would, against the current one.
		tc.InsecureSkipVerify = true
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			name := f.ServerName
			if name == "" {
				name = cs.ServerName
			}
			return verify(cs.PeerCertificates, w.pool(), name, x509.ExtKeyUsageServerAuth)
		}
	}
	return tc, nil
}

// Server returns a server configuration (TLS 1.2 or later) presenting
// CertFile; with a CAFile it requires a client certificate that CA signed.
// The returned configuration can be cloned (gRPC does) and keeps working.
func (f Files) Server() (*tls.Config, error) {
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, errors.New("tlsfiles: a server needs a certificate and its key")
	}
	w := &watched{files: f}
	if err := w.load(); err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return w.cert() }}
	if f.CAFile != "" {
		var crl *CRL
		if f.CRLFile != "" {
			crl = NewCRL(f.CRLFile, f.CAFile)
		}
		// As for the client: the chain is verified against the pool as it
		// is now, not as it was when the configuration was built.
		tc.ClientAuth = tls.RequireAnyClientCert
		tc.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			chain := make([]*x509.Certificate, 0, len(raw))
			for _, der := range raw {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			if err := verify(chain, w.pool(), "", x509.ExtKeyUsageClientAuth); err != nil {
				return err
			}
			if crl != nil && crl.Revoked(chain[0]) {
				return fmt.Errorf("tlsfiles: client certificate %s (serial %s) is revoked", chain[0].Subject.CommonName, chain[0].SerialNumber.Text(16))
			}
			return nil
		}
	}
	return tc, nil
}

func verify(chain []*x509.Certificate, roots *x509.CertPool, name string, usage x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return errors.New("tlsfiles: the peer sent no certificate")
	}
	opts := x509.VerifyOptions{Roots: roots, DNSName: name, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{usage}}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := chain[0].Verify(opts)
	return err
}

// watched holds what the files held when last read, and reads them again
// when one's modification time or size changed.
type watched struct {
	files Files
	mu    sync.Mutex
	stamp string
	c     *tls.Certificate
	p     *x509.CertPool
}

func (w *watched) cert() (*tls.Certificate, error) {
	if err := w.load(); err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.c, nil
}

func (w *watched) pool() *x509.CertPool {
	_ = w.load() // on a broken rewrite keep the last good pool
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.p
}

// load reads the files if they changed. A file caught half-written fails
// to parse; the last good contents stay in use and the error is returned
// only while there were never good ones.
func (w *watched) load() error {
	stamp := ""
	for _, name := range []string{w.files.CAFile, w.files.CertFile, w.files.KeyFile} {
		if name == "" {
			continue
		}
		st, err := os.Stat(name)
		if err != nil {
			return w.failed(fmt.Errorf("tlsfiles: %w", err))
		}
		stamp += fmt.Sprintf("%s:%d:%d;", name, st.ModTime().UnixNano(), st.Size())
	}
	w.mu.Lock()
	same := stamp == w.stamp
	w.mu.Unlock()
	if same {
		return nil
	}
	var cert *tls.Certificate
	if w.files.CertFile != "" {
		c, err := tls.LoadX509KeyPair(w.files.CertFile, w.files.KeyFile)
		if err != nil {
			return w.failed(fmt.Errorf("tlsfiles: %s: %w", w.files.CertFile, err))
		}
		cert = &c
	}
	var pool *x509.CertPool
	if w.files.CAFile != "" {
		pem, err := os.ReadFile(w.files.CAFile)
		if err != nil {
			return w.failed(fmt.Errorf("tlsfiles: %w", err))
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return w.failed(fmt.Errorf("tlsfiles: %s: no PEM certificates", w.files.CAFile))
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stamp, w.c, w.p = stamp, cert, pool
	return nil
}

func (w *watched) failed(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stamp != "" {
		return nil // keep the last good files
	}
	return err
}
