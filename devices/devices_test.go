package devices_test

import (
	"crypto/pbkdf2"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/siteca"
)

func site(t *testing.T) (string, *siteca.Site) {
	t.Helper()
	dir := t.TempDir()
	s, _, err := siteca.Ensure(siteca.Config{Dir: dir, Names: []string{"192.0.2.10"}})
	if err != nil {
		t.Fatal(err)
	}
	return dir, s
}

// check verifies password against the $7$ line for id in dir's password
// file, as Mosquitto does.
func check(t *testing.T, dir, id, password string) bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, devices.PasswordFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		user, hash, _ := strings.Cut(line, ":")
		if user != id {
			continue
		}
		f := strings.Split(hash, "$")
		if len(f) != 5 || f[1] != "7" {
			t.Fatalf("hash %q is not $7$", hash)
		}
		iter, _ := strconv.Atoi(f[2])
		salt, _ := base64.StdEncoding.DecodeString(f[3])
		want, _ := base64.StdEncoding.DecodeString(f[4])
		got, _ := pbkdf2.Key(sha512.New, password, salt, iter, len(want))
		return subtle.ConstantTimeCompare(got, want) == 1
	}
	return false
}

// A password is stored as its hash only, once per device; removing the
// device removes it.
func TestPasswords(t *testing.T) {
	dir, _ := site(t)
	r := devices.Open(dir)
	pw := devices.NewPassword()
	if len(pw) < 32 {
		t.Fatalf("generated password %d chars", len(pw))
	}
	if err := r.AddPassword("term-1", []byte(pw)); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, devices.PasswordFile))
	if strings.Contains(string(raw), pw) {
		t.Fatal("the password file holds the password")
	}
	if !check(t, dir, "term-1", pw) || check(t, dir, "term-1", pw+"x") {
		t.Fatal("the stored hash does not verify the password (or verifies another)")
	}
	if err := r.AddPassword("term-1", []byte("another-password")); !errors.Is(err, devices.ErrExists) {
		t.Fatalf("adding term-1 again: %v, want ErrExists", err)
	}
	if err := r.AddPassword("term-2", []byte("short")); err == nil {
		t.Fatal("a 5-character password was accepted")
	}
	if err := r.AddPassword("term-3", []byte("line\nbreak-password")); err == nil {
		t.Fatal("a password with a line break was accepted")
	}
	if found, err := r.Remove("term-1"); err != nil || !found {
		t.Fatalf("Remove: %v, %v", found, err)
	}
	if check(t, dir, "term-1", pw) {
		t.Fatal("a removed device's password still verifies")
	}
	if found, err := r.Remove("term-1"); err != nil || found {
		t.Fatalf("Remove again: %v, %v; want not found", found, err)
	}
}

// Certificates: issued and listed; removing the device revokes them in a
// CRL the site CA signed, and List no longer shows them.
func TestCertificatesAndRevocation(t *testing.T) {
	dir, ca := site(t)
	r := devices.Open(dir)
	certPEM, keyPEM, err := r.IssueCertificate("term-7", nil, 0)
	if err != nil || len(keyPEM) == 0 {
		t.Fatalf("IssueCertificate: %v", err)
	}
	if err := r.AddPassword("term-7", []byte(devices.NewPassword())); err != nil {
		t.Fatal(err)
	}
	list, err := r.List()
	if err != nil || len(list) != 2 || list[0].Kind != "certificate" || list[1].Kind != "password" || list[0].NotAfter.Before(time.Now().Add(4*365*24*time.Hour)) {
		t.Fatalf("List: %+v, %v", list, err)
	}
	if _, err := os.Stat(filepath.Join(dir, devices.CRLFile)); err == nil {
		t.Fatal("a CRL before anything was revoked")
	}
	if found, err := r.Remove("term-7"); err != nil || !found {
		t.Fatalf("Remove: %v, %v", found, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, devices.CRLFile))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caBlock, _ := pem.Decode(ca.CAPEM())
	caCert, _ := x509.ParseCertificate(caBlock.Bytes)
	if err := crl.CheckSignatureFrom(caCert); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	certBlock, _ := pem.Decode(certPEM)
	cert, _ := x509.ParseCertificate(certBlock.Bytes)
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Fatalf("CRL lists %+v, want term-7's serial %s", crl.RevokedCertificateEntries, cert.SerialNumber)
	}
	if crl.NextUpdate.Before(time.Now().Add(29 * 24 * time.Hour)) {
		t.Errorf("CRL next update %s", crl.NextUpdate)
	}
	if list, _ := r.List(); len(list) != 0 {
		t.Fatalf("List after Remove: %+v", list)
	}
	// Refresh signs it again, later.
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	raw2, _ := os.ReadFile(filepath.Join(dir, devices.CRLFile))
	block2, _ := pem.Decode(raw2)
	crl2, _ := x509.ParseRevocationList(block2.Bytes)
	if crl2.Number.Cmp(crl.Number) <= 0 || len(crl2.RevokedCertificateEntries) != 1 {
		t.Fatalf("refreshed CRL number %s (was %s), %d entries", crl2.Number, crl.Number, len(crl2.RevokedCertificateEntries))
	}
}

// Ids a password file line, a topic level or a certificate cannot hold
// are refused by every command.
func TestInvalidIDsRefused(t *testing.T) {
	dir, _ := site(t)
	r := devices.Open(dir)
	for _, id := range []string{"", "a:b", "a/b", "a b", "#", siteca.BridgeUser} {
		if err := r.AddPassword(id, []byte("long-enough-password")); err == nil {
			t.Errorf("AddPassword(%q) accepted", id)
		}
		if _, _, err := r.IssueCertificate(id, nil, 0); err == nil {
			t.Errorf("IssueCertificate(%q) accepted", id)
		}
		if _, err := r.Remove(id); err == nil {
			t.Errorf("Remove(%q) accepted", id)
		}
	}
}

// SetAccount writes the bridge's account (not a device) once and keeps
// it while the password matches; another password replaces the hash.
func TestSetAccount(t *testing.T) {
	dir, _ := site(t)
	r := devices.Open(dir)
	if err := r.SetAccount(siteca.BridgeUser, []byte("bridge-secret-1")); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, devices.PasswordFile))
	if err := r.SetAccount(siteca.BridgeUser, []byte("bridge-secret-1")); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, devices.PasswordFile)); string(again) != string(before) || !check(t, dir, siteca.BridgeUser, "bridge-secret-1") {
		t.Fatalf("the same password rewrote the entry:\n%s\n%s", before, again)
	}
	if err := r.SetAccount(siteca.BridgeUser, []byte("bridge-secret-2")); err != nil || !check(t, dir, siteca.BridgeUser, "bridge-secret-2") {
		t.Fatalf("a new password: %v", err)
	}
	if list, err := r.List(); err != nil || len(list) != 0 {
		t.Errorf("List shows the bridge as a device: %+v, %v", list, err)
	}
}
