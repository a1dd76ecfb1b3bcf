// Package devices keeps a site's device identities in the files its MQTT
// broker reads: no admin API, nothing to authenticate but file access.
//
// In a site directory (the site CA's, see package siteca):
//
//	passwd        devices' passwords, Mosquitto's format (id:$7$...: PBKDF2-SHA512);
//	              the embedded broker and Mosquitto read it at each login
//	issued.json   the client certificates the site CA issued: id, serial, dates, revoked
//	crl.pem       the site CA's revocation list of the revoked ones
//	seen.json     when the embedded broker last saw each device (id -> time)
//
// Every change takes the directory's lock and replaces files whole, so a
// broker reading them sees the old or the new content.
package devices

import (
	"bufio"
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgebridge/edgebridge/siteca"
)

// The files in a site directory.
const (
	PasswordFile = "passwd"
	IssuedFile   = "issued.json"
	CRLFile      = "crl.pem"
	SeenFile     = "seen.json"
)

// CRLValidity is how long a CRL is current (its NextUpdate). The process
// serving MQTT signs it again daily (Refresh), so it never goes stale
// while that process runs; a broker holding a stale one still applies it.
const CRLValidity = 30 * 24 * time.Hour

// mosquitto_passwd's parameters (Mosquitto 2.0): PBKDF2-SHA512, 101
// iterations, a 12-byte salt, a 64-byte key.
const (
	iterations = 101
	saltLen    = 12
	keyLen     = 64
)

// ErrExists is returned when adding a device that already has a password.
var ErrExists = errors.New("devices: the device already has a password (remove it first)")

// Registry is a site directory's devices.
type Registry struct {
	dir string
}

// Open returns the registry in dir (the site directory).
func Open(dir string) *Registry { return &Registry{dir: dir} }

// Device is one provisioned device as List reports it.
type Device struct {
	ID string
	// Kind is "password" or "certificate" (a device may have both: two
	// entries).
	Kind    string
	Created time.Time // certificates only; a password line has no date
	// NotAfter and Serial of a certificate.
	NotAfter time.Time
	Serial   string
	// LastSeen is when the broker last saw the device logged in, where it
	// records it (the embedded broker, every 30 seconds); zero: unknown.
	LastSeen time.Time
}

// ReadSeen reads a seen.json; a file not there is an empty one.
func ReadSeen(path string) (map[string]time.Time, error) {
	seen := map[string]time.Time{}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return seen, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &seen); err != nil {
		return nil, fmt.Errorf("devices: %s: %w", path, err)
	}
	return seen, nil
}

// WriteSeen replaces the seen.json at path.
func WriteSeen(path string, seen map[string]time.Time) error {
	raw, err := json.Marshal(seen)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), siteca.DirMode); err != nil {
		return err
	}
	return siteca.WriteFile(path, append(raw, '\n'), 0o644)
}

// issued is one certificate in issued.json.
type issued struct {
	ID       string    `json:"id"`
	Serial   string    `json:"serial"` // hex
	Created  time.Time `json:"created"`
	NotAfter time.Time `json:"not_after"`
	Revoked  time.Time `json:"revoked,omitzero"`
}

// NewPassword returns a random password (24 bytes, base64url: 32 chars).
func NewPassword() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// HashPassword returns password in Mosquitto's $7$ format.
func HashPassword(password []byte) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key, err := pbkdf2.Key(sha512.New, string(password), salt, iterations, keyLen)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("$7$%d$%s$%s", iterations, base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(key)), nil
}

// VerifyPassword checks password against a mosquitto_passwd hash:
// $7$<iterations>$<salt>$<PBKDF2-SHA512> or $6$<salt>$<SHA-512(password salt)>,
// salt and hash in base64.
func VerifyPassword(hash string, password []byte) bool {
	f := strings.Split(hash, "$")
	var want, got []byte
	switch {
	case len(f) == 5 && f[1] == "7":
		iter, err1 := strconv.Atoi(f[2])
		salt, err2 := base64.StdEncoding.DecodeString(f[3])
		w, err3 := base64.StdEncoding.DecodeString(f[4])
		if errors.Join(err1, err2, err3) != nil || iter < 1 || len(w) == 0 {
			return false
		}
		k, err := pbkdf2.Key(sha512.New, string(password), salt, iter, len(w))
		if err != nil {
			return false
		}
		want, got = w, k
	case len(f) == 4 && f[1] == "6":
		salt, err1 := base64.StdEncoding.DecodeString(f[2])
		w, err2 := base64.StdEncoding.DecodeString(f[3])
		if errors.Join(err1, err2) != nil {
			return false
		}
		sum := sha512.Sum512(append(append([]byte{}, password...), salt...))
		want, got = w, sum[:]
	default:
		return false
	}
	return subtle.ConstantTimeCompare(want, got) == 1
}

// AddPassword gives device id a password: only its hash is stored.
func (r *Registry) AddPassword(id string, password []byte) error {
	if err := siteca.ValidDeviceID(id); err != nil {
		return err
	}
	if len(password) < 8 || bytes.ContainsAny(password, "\r\n") {
		return errors.New("devices: a password needs at least 8 characters and no line break")
	}
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	return r.locked(func() error {
		lines, err := r.passwords()
		if err != nil {
			return err
		}
		if _, ok := lines[id]; ok {
			return ErrExists
		}
		lines[id] = hash
		return r.writePasswords(lines)
	})
}

// SetAccount gives user, an account that is not a device (the bridge's
// own on a Mosquitto broker, siteca.BridgeUser), password, unless its
// entry already holds it.
func (r *Registry) SetAccount(user string, password []byte) error {
	return r.locked(func() error {
		lines, err := r.passwords()
		if err != nil || VerifyPassword(lines[user], password) {
			return err
		}
		if lines[user], err = HashPassword(password); err != nil {
			return err
		}
		return r.writePasswords(lines)
	})
}

// Remove takes device id's password away and revokes its certificates;
// it reports whether it had either. The broker refuses its next login, and
// the embedded broker closes its open connections when it sees the files
// change.
func (r *Registry) Remove(id string) (found bool, err error) {
	if err := siteca.ValidDeviceID(id); err != nil {
		return false, err
	}
	err = r.locked(func() error {
		lines, err := r.passwords()
		if err != nil {
			return err
		}
		if _, ok := lines[id]; ok {
			found = true
			delete(lines, id)
			if err := r.writePasswords(lines); err != nil {
				return err
			}
		}
		certs, err := r.issued()
		if err != nil {
			return err
		}
		revoked := false
		for i := range certs {
			if certs[i].ID == id && certs[i].Revoked.IsZero() {
				certs[i].Revoked, found, revoked = time.Now().UTC(), true, true
			}
		}
		if !revoked {
			return nil
		}
		if err := r.writeIssued(certs); err != nil {
			return err
		}
		return r.signCRL(certs)
	})
	return found, err
}

// IssueCertificate issues device id a certificate from the site CA: with a
// new key (returned) when csrPEM is nil, else for the CSR's key.
func (r *Registry) IssueCertificate(id string, csrPEM []byte, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := siteca.ValidDeviceID(id); err != nil {
		return nil, nil, err
	}
	ca, err := siteca.Load(r.dir)
	if err != nil {
		return nil, nil, err
	}
	err = r.locked(func() error {
		if csrPEM != nil {
			certPEM, err = ca.SignCSR(id, csrPEM, validity)
		} else {
			certPEM, keyPEM, err = ca.Issue(id, validity)
		}
		if err != nil {
			return err
		}
		block, _ := pem.Decode(certPEM)
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return err
		}
		certs, err := r.issued()
		if err != nil {
			return err
		}
		certs = append(certs, issued{ID: id, Serial: c.SerialNumber.Text(16), Created: time.Now().UTC(), NotAfter: c.NotAfter.UTC()})
		return r.writeIssued(certs)
	})
	return certPEM, keyPEM, err
}

// List returns the site's devices: a password entry per device with one,
// and each certificate not revoked, by id.
func (r *Registry) List() ([]Device, error) {
	lines, err := r.passwords()
	if err != nil {
		return nil, err
	}
	certs, err := r.issued()
	if err != nil {
		return nil, err
	}
	seen, err := ReadSeen(filepath.Join(r.dir, SeenFile))
	if err != nil {
		return nil, err
	}
	var out []Device
	for id := range lines {
		if id == siteca.BridgeUser {
			continue // the bridge, not a device
		}
		out = append(out, Device{ID: id, Kind: "password", LastSeen: seen[id]})
	}
	for _, c := range certs {
		if c.Revoked.IsZero() {
			out = append(out, Device{ID: c.ID, Kind: "certificate", Created: c.Created, NotAfter: c.NotAfter, Serial: c.Serial, LastSeen: seen[c.ID]})
		}
	}
	slices.SortFunc(out, func(a, b Device) int {
		return strings.Compare(a.ID+"\x00"+a.Kind+a.Serial, b.ID+"\x00"+b.Kind+b.Serial)
	})
	return out, nil
}

// Refresh signs the CRL again (a new NextUpdate), an empty one when
// nothing is revoked (Mosquitto's crlfile must exist): the process
// serving MQTT, or keeping Mosquitto's files, calls it twice a day.
func (r *Registry) Refresh() error {
	return r.locked(func() error {
		certs, err := r.issued()
		if err != nil {
			return err
		}
		return r.signCRL(certs)
	})
}

// signCRL writes crl.pem listing the revoked certificates, signed by the
// site CA.
func (r *Registry) signCRL(certs []issued) error {
	ca, err := siteca.Load(r.dir)
	if err != nil {
		return err
	}
	var entries []x509.RevocationListEntry
	for _, c := range certs {
		if c.Revoked.IsZero() {
			continue
		}
		n, ok := new(big.Int).SetString(c.Serial, 16)
		if !ok {
			return fmt.Errorf("devices: %s: bad serial %q", IssuedFile, c.Serial)
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: c.Revoked})
	}
	now := time.Now()
	der, err := ca.SignCRL(&x509.RevocationList{Number: big.NewInt(now.UnixNano()), ThisUpdate: now.Add(-time.Minute),
		NextUpdate: now.Add(CRLValidity), RevokedCertificateEntries: entries})
	if err != nil {
		return err
	}
	return siteca.WriteFile(filepath.Join(r.dir, CRLFile), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644)
}

func (r *Registry) locked(fn func() error) error {
	unlock, err := siteca.Lock(r.dir)
	if err != nil {
		return err
	}
	defer unlock()
	return fn()
}

// passwords reads the password file: id -> hash (empty if there is none).
func (r *Registry) passwords() (map[string]string, error) {
	raw, err := os.ReadFile(filepath.Join(r.dir, PasswordFile))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	lines := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, hash, ok := strings.Cut(line, ":")
		if !ok || id == "" || !strings.HasPrefix(hash, "$") {
			return nil, fmt.Errorf("devices: %s line %d: want id:$hash", PasswordFile, n)
		}
		lines[id] = hash
	}
	return lines, sc.Err()
}

func (r *Registry) writePasswords(lines map[string]string) error {
	ids := make([]string, 0, len(lines))
	for id := range lines {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var b bytes.Buffer
	for _, id := range ids {
		fmt.Fprintf(&b, "%s:%s\n", id, lines[id])
	}
	// 0640: the broker's group may read it (Mosquitto runs as its own user).
	return siteca.WriteFile(filepath.Join(r.dir, PasswordFile), b.Bytes(), 0o640)
}

func (r *Registry) issued() ([]issued, error) {
	raw, err := os.ReadFile(filepath.Join(r.dir, IssuedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var certs []issued
	if err := json.Unmarshal(raw, &certs); err != nil {
		return nil, fmt.Errorf("devices: %s: %w", IssuedFile, err)
	}
	return certs, nil
}

func (r *Registry) writeIssued(certs []issued) error {
	raw, err := json.MarshalIndent(certs, "", "  ")
	if err != nil {
		return err
	}
	return siteca.WriteFile(filepath.Join(r.dir, IssuedFile), append(raw, '\n'), 0o644)
}
