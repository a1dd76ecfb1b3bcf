package embedded

import (
	"crypto/sha512"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Hashes written by mosquitto_passwd itself verify; others do not.
func TestMosquittoPasswordFile(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Fatalf("mosquitto_passwd is not installed (scripts/test.sh installs mosquitto): %v", err)
	}
	path := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte("term-1:first secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// -U hashes user:password lines in place (a colon ends the password
	// there); -b adds one user with any password.
	if out, err := exec.Command(bin, "-U", path).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd -U: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "-b", path, "term-2", "s3cond:with:colons").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd -b: %v\n%s", err, out)
	}
	pf := passwordFile{path: path}
	for _, c := range []struct {
		user, password string
		ok             bool
	}{
		{"term-1", "first secret", true},
		{"term-2", "s3cond:with:colons", true},
		{"term-1", "s3cond:with:colons", false},
		{"term-1", "first secreT", false},
		{"term-1", "", false},
		{"term-3", "first secret", false},
	} {
		if got := pf.check(c.user, []byte(c.password)); got != c.ok {
			t.Errorf("%s with %q: got %v, want %v", c.user, c.password, got, c.ok)
		}
	}

	// Mosquitto's older $6$ format: SHA-512 of the password and the salt.
	salt := []byte("0123456789ab")
	sum := sha512.Sum512(append([]byte("old secret"), salt...))
	old := "$6$" + base64.StdEncoding.EncodeToString(salt) + "$" + base64.StdEncoding.EncodeToString(sum[:])
	if !verifyPassword(old, []byte("old secret")) || verifyPassword(old, []byte("old secreT")) {
		t.Error("$6$ hash not verified as mosquitto_passwd 1.x wrote it")
	}
	for _, bad := range []string{"", "plain", "$7$x$y$z", "$7$101$!!$!!", "$5$a$b", "$7$0$AAAA$AAAA"} {
		if verifyPassword(bad, []byte("")) || verifyPassword(bad, []byte("x")) {
			t.Errorf("malformed hash %q verified", bad)
		}
	}

	// A line that is not user:$hash makes the file unreadable (the last
	// good contents stay in use).
	os.WriteFile(path, []byte("term-1 first secret\n"), 0o600)
	if _, err := readPasswordFile(path); err == nil {
		t.Error("a malformed password file was accepted")
	}
	if !pf.check("term-2", []byte("s3cond:with:colons")) {
		t.Error("a malformed rewrite dropped the last good password file")
	}
}
