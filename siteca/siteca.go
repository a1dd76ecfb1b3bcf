// Package siteca is a site's own certificate authority: the identity a
// site that nobody configured certificates for gets on its first start.
//
// Ensure makes, in a directory on the data volume, a CA (ca.pem, ca.key)
// and a server certificate it signs (server.pem, server.key) for the names
// and addresses devices dial. It never overwrites the CA; it reuses both on
// every start and issues a new server certificate when the old one comes
// within RenewBefore of its expiry or no longer covers the names. Several
// processes may call it at once (the bridge and `edgebridge device`
// commands, two containers on one volume): a file lock serialises them,
// and every file is replaced whole (written aside, synced, renamed), so a
// reader sees the old or the new one, never a part.
//
// The CA then signs device certificates (Issue, SignCSR). Devices trust
// ca.pem (`edgebridge site ca` prints it).
package siteca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"time"

	"github.com/edgebridge/edgebridge/internal/defaults"
)

// The files in Config.Dir.
const (
	CAFile     = "ca.pem"
	CAKeyFile  = "ca.key"
	ServerFile = "server.pem"
	ServerKey  = "server.key"
	lockFile   = ".lock"
)

// Defaults.
const (
	DefaultCAValidity     = 20 * 365 * 24 * time.Hour
	DefaultServerValidity = 397 * 24 * time.Hour // the most browsers accept; devices often check too
	DefaultRenewBefore    = 30 * 24 * time.Hour
	DefaultClientValidity = 5 * 365 * 24 * time.Hour
)

// Config says where the site's identity lives and what its server
// certificate names.
type Config struct {
	// Dir holds the files; created (0700) if missing. Required.
	Dir string
	// Names are the DNS names and IP addresses devices dial (the node's
	// address, a site host name). Required: a certificate for names no
	// device uses is no use.
	Names []string
	// SiteName is the CA's common name. Default: "edgebridge site CA".
	SiteName string
	// CAValidity, ServerValidity, RenewBefore: see the Default constants.
	CAValidity, ServerValidity, RenewBefore time.Duration
}

func (c Config) withDefaults() Config {
	defaults.Zero(&c.SiteName, "edgebridge site CA")
	defaults.Positive(&c.CAValidity, DefaultCAValidity)
	defaults.Positive(&c.ServerValidity, DefaultServerValidity)
	defaults.Positive(&c.RenewBefore, DefaultRenewBefore)
	return c
}

// Site is a site's CA, loaded.
type Site struct {
	cfg    Config
	ca     *x509.Certificate
	caKey  crypto.Signer
	caPEM  []byte
	server *x509.Certificate
}

// DirMode is the site directory's mode: its owner's group (a site's
// Mosquitto in another container) may read what is not owner-only.
const DirMode = 0o750

// serverKeyMode lets that group read the server's key.
const serverKeyMode = 0o640

// Ensure loads the site's CA and server certificate from cfg.Dir, creating
// what is missing and renewing the server certificate when due (see the
// package comment). It reports what it did in made: "ca", "server" (both
// new), "renewed" or "".
func Ensure(cfg Config) (s *Site, made string, err error) {
	cfg = cfg.withDefaults()
	if cfg.Dir == "" {
		return nil, "", errors.New("siteca: no directory")
	}
	if len(cfg.Names) == 0 {
		return nil, "", errors.New("siteca: no names for the server certificate (the addresses devices dial)")
	}
	// The directory and the server's key are readable by the owner's
	// group: a site's Mosquitto, in another container, reads them as a
	// member of it (the CA's key stays the owner's only).
	if err := os.MkdirAll(cfg.Dir, DirMode); err != nil {
		return nil, "", fmt.Errorf("siteca: %w", err)
	}
	if err := os.Chmod(cfg.Dir, DirMode); err != nil {
		return nil, "", fmt.Errorf("siteca: %w", err)
	}
	unlock, err := Lock(cfg.Dir)
	if err != nil {
		return nil, "", err
	}
	defer unlock()

	s = &Site{cfg: cfg}
	switch err := s.loadCA(); {
	case errors.Is(err, os.ErrNotExist):
		if err := s.makeCA(); err != nil {
			return nil, "", err
		}
		made = "ca"
	case err != nil:
		return nil, "", err
	}
	due, err := s.serverDue(time.Now())
	if err != nil {
		return nil, "", err
	}
	if due != "" {
		if err := s.makeServer(); err != nil {
			return nil, "", err
		}
		if made == "" {
			made = "renewed"
		}
	}
	if err := os.Chmod(filepath.Join(cfg.Dir, ServerKey), serverKeyMode); err != nil { // made 0600 before
		return nil, "", fmt.Errorf("siteca: %w", err)
	}
	return s, made, nil
}

// Load reads an existing site CA from dir (for the device commands, which
// must not create one where the broker would not find it).
func Load(dir string) (*Site, error) {
	s := &Site{cfg: Config{Dir: dir}.withDefaults()}
	if err := s.loadCA(); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("siteca: no site CA in %s (it is made when the broker first starts with TLS)", dir)
		}
		return nil, err
	}
	return s, nil
}

// CAPEM is the CA certificate devices trust.
func (s *Site) CAPEM() []byte { return s.caPEM }

// ServerFiles are the paths of the server certificate and key.
func (s *Site) ServerFiles() (cert, key string) {
	return filepath.Join(s.cfg.Dir, ServerFile), filepath.Join(s.cfg.Dir, ServerKey)
}

// CAFile is the path of the CA certificate.
func (s *Site) CAFile() string { return filepath.Join(s.cfg.Dir, CAFile) }

// ServerNotAfter is when the server certificate expires (zero after Load).
func (s *Site) ServerNotAfter() time.Time {
	if s.server == nil {
		return time.Time{}
	}
	return s.server.NotAfter
}

func (s *Site) loadCA() error {
	certPEM, err := os.ReadFile(filepath.Join(s.cfg.Dir, CAFile))
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(filepath.Join(s.cfg.Dir, CAKeyFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("siteca: %s without %s: restore the key from a backup (a new CA would lock every device out)", CAFile, CAKeyFile)
		}
		return err
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return fmt.Errorf("siteca: %s: %w", CAFile, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return fmt.Errorf("siteca: %s: %w", CAKeyFile, err)
	}
	if !cert.IsCA || !publicKeyMatches(cert, key) {
		return fmt.Errorf("siteca: %s is not a CA certificate for %s", CAFile, CAKeyFile)
	}
	s.ca, s.caKey, s.caPEM = cert, key, certPEM
	return nil
}

func (s *Site) makeCA() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: s.cfg.SiteName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(s.cfg.CAValidity),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The key first: a ca.pem without its key is refused at the next start.
	if err := WriteFile(filepath.Join(s.cfg.Dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	if err := WriteFile(filepath.Join(s.cfg.Dir, CAFile), certPEM, 0o644); err != nil {
		return err
	}
	s.ca, s.caKey, s.caPEM = cert, key, certPEM
	return nil
}

// serverDue says why the server certificate must be issued again, or "".
func (s *Site) serverDue(now time.Time) (string, error) {
	raw, err := os.ReadFile(filepath.Join(s.cfg.Dir, ServerFile))
	if errors.Is(err, os.ErrNotExist) {
		return "missing", nil
	}
	if err != nil {
		return "", err
	}
	cert, err := parseCert(raw)
	if err != nil {
		return "unreadable", nil
	}
	if _, err := os.Stat(filepath.Join(s.cfg.Dir, ServerKey)); err != nil {
		return "key missing", nil
	}
	s.server = cert
	switch {
	case cert.CheckSignatureFrom(s.ca) != nil:
		return "not signed by the site CA", nil
	case now.Add(s.cfg.RenewBefore).After(cert.NotAfter):
		return "expiring", nil
	case !slices.Equal(names(cert), sortedNames(s.cfg.Names)):
		return "names changed", nil
	}
	return "", nil
}

func (s *Site) makeServer() error {
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: s.cfg.Names[0]}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, n := range s.cfg.Names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	certPEM, keyPEM, err := s.issue(tmpl, nil, s.cfg.ServerValidity)
	if err != nil {
		return err
	}
	// The key first: a certificate read with the old key fails one
	// handshake; the broker reads both again on the next.
	if err := WriteFile(filepath.Join(s.cfg.Dir, ServerKey), keyPEM, serverKeyMode); err != nil {
		return err
	}
	if err := WriteFile(filepath.Join(s.cfg.Dir, ServerFile), certPEM, 0o644); err != nil {
		return err
	}
	s.server, _ = parseCert(certPEM)
	return nil
}

// SignCRL signs a revocation list with the site CA.
func (s *Site) SignCRL(tmpl *x509.RevocationList) ([]byte, error) {
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, s.ca, s.caKey)
	if err != nil {
		return nil, fmt.Errorf("siteca: sign CRL: %w", err)
	}
	return der, nil
}

// deviceID is what a device id may be in a certificate or a password
// file: a Mosquitto password file line is "id:hash", and an MQTT topic
// level must not hold + # /.
var deviceID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// BridgeUser is the bridge's own MQTT account on the site's broker (the
// shipped Mosquitto ACL gives it every request and reply): no device may
// be provisioned under it.
const BridgeUser = "edgebridge"

// ValidDeviceID refuses ids a device cannot be provisioned under.
func ValidDeviceID(id string) error {
	if !deviceID.MatchString(id) {
		return fmt.Errorf("siteca: device id %q: want 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit", clip(id))
	}
	if id == BridgeUser {
		return fmt.Errorf("siteca: device id %q is the bridge's own account", id)
	}
	return nil
}

// Issue makes a key and a client certificate for device id (its common
// name, the identity the broker uses), valid for validity (default
// DefaultClientValidity).
func (s *Site) Issue(id string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := ValidDeviceID(id); err != nil {
		return nil, nil, err
	}
	return s.issue(clientTemplate(id), nil, validity)
}

// SignCSR signs a device's certificate request, so its key never leaves
// the device. The certificate names id, whatever the request asked for.
func (s *Site) SignCSR(id string, csrPEM []byte, validity time.Duration) (certPEM []byte, err error) {
	if err := ValidDeviceID(id); err != nil {
		return nil, err
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("siteca: not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("siteca: certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("siteca: certificate request signature: %w", err)
	}
	certPEM, _, err = s.issue(clientTemplate(id), csr.PublicKey, validity)
	return certPEM, err
}

func clientTemplate(id string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: id}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}

// issue signs tmpl for pub, or for a new key it returns (PEM) if pub is nil.
func (s *Site) issue(tmpl *x509.Certificate, pub crypto.PublicKey, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if validity <= 0 {
		validity = DefaultClientValidity
	}
	if pub == nil {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		if keyPEM, err = encodeKey(key); err != nil {
			return nil, nil, err
		}
		pub = &key.PublicKey
	}
	now := time.Now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = now.Add(-time.Hour) // a device clock a little behind
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(s.ca.NotAfter) {
		tmpl.NotAfter = s.ca.NotAfter // never beyond its CA
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca, pub, s.caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("siteca: sign: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

func names(c *x509.Certificate) []string {
	out := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	slices.Sort(out)
	return out
}

func sortedNames(in []string) []string {
	out := make([]string, 0, len(in))
	for _, n := range in {
		if ip := net.ParseIP(n); ip != nil {
			n = ip.String()
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func parseCert(raw []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

func parseKey(raw []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("not a PEM key")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("not a signing key")
	}
	return signer, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func publicKeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(key.Public())
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

// WriteFile replaces path with data durably: written aside, synced,
// renamed. A reader sees the old or the new content.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("siteca: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("siteca: %w", err)
	}
	return nil
}

// Lock takes the site directory's exclusive lock, waiting for it: what
// changes the site's files (Ensure, the device commands) holds it.
func Lock(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("siteca: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("siteca: lock %s: %w", path, err)
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
