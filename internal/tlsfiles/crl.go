package tlsfiles

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sync"
)

// CRL is a certificate revocation list in a PEM file, read again when it
// changes. A missing file revokes nothing (no certificate was revoked
// yet); a CRL that no CA in CAFile signed, or that cannot be parsed, is
// not applied (the last good one stays). A CRL past its NextUpdate is
// still applied: a stale list of revoked certificates is better than none.
type CRL struct {
	file, caFile string

	mu      sync.Mutex
	stamp   string
	revoked map[string]bool // serial (hex)
	err     error           // why the file on disk is not applied
}

// NewCRL watches file, checked against the CAs in caFile.
func NewCRL(file, caFile string) *CRL { return &CRL{file: file, caFile: caFile} }

// Revoked reports whether the CRL lists cert's serial number.
func (c *CRL) Revoked(cert *x509.Certificate) bool {
	c.load()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.revoked[cert.SerialNumber.Text(16)]
}

// Err says why the CRL on disk is not in use, nil if it is (or there is none).
func (c *CRL) Err() error {
	c.load()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *CRL) load() {
	st, err := os.Stat(c.file)
	stamp := "none"
	if err == nil {
		stamp = fmt.Sprintf("%d:%d", st.ModTime().UnixNano(), st.Size())
	}
	c.mu.Lock()
	same := stamp == c.stamp
	c.mu.Unlock()
	if same {
		return
	}
	revoked, err := c.read(errors.Is(err, os.ErrNotExist))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stamp, c.err = stamp, err
	if err == nil {
		c.revoked = revoked
	}
}

func (c *CRL) read(missing bool) (map[string]bool, error) {
	if missing {
		return map[string]bool{}, nil
	}
	raw, err := os.ReadFile(c.file)
	if err != nil {
		return nil, fmt.Errorf("tlsfiles: %w", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "X509 CRL" {
		return nil, fmt.Errorf("tlsfiles: %s: not a PEM X509 CRL", c.file)
	}
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("tlsfiles: %s: %w", c.file, err)
	}
	cas, err := os.ReadFile(c.caFile)
	if err != nil {
		return nil, fmt.Errorf("tlsfiles: %w", err)
	}
	signed := false
	for rest := cas; !signed; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if ca, err := x509.ParseCertificate(b.Bytes); err == nil && crl.CheckSignatureFrom(ca) == nil {
			signed = true
		}
	}
	if !signed {
		return nil, fmt.Errorf("tlsfiles: %s: not signed by a CA in %s", c.file, c.caFile)
	}
	out := make(map[string]bool, len(crl.RevokedCertificateEntries))
	for _, e := range crl.RevokedCertificateEntries {
		out[new(big.Int).Set(e.SerialNumber).Text(16)] = true
	}
	return out, nil
}
