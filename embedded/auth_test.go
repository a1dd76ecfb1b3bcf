package embedded

import (
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgebridge/edgebridge/devices"
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
	if !devices.VerifyPassword(old, []byte("old secret")) || devices.VerifyPassword(old, []byte("old secreT")) {
		t.Error("$6$ hash not verified as mosquitto_passwd 1.x wrote it")
	}
	for _, bad := range []string{"", "plain", "$7$x$y$z", "$7$101$!!$!!", "$5$a$b", "$7$0$AAAA$AAAA"} {
		if devices.VerifyPassword(bad, []byte("")) || devices.VerifyPassword(bad, []byte("x")) {
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

// Failed logins are counted; after maxLoginFailures for one device from
// one address its logins are refused unchecked, even with the right
// password, until the window has passed; another device at the same
// address and the bridge's own account are not locked out.
func TestLoginFailuresLimited(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	hash := "$6$" + base64.StdEncoding.EncodeToString([]byte("salt")) + "$"
	sum := sha512.Sum512(append([]byte("right-password"), []byte("salt")...))
	sum2 := sha512.Sum512(append([]byte("right-password-2"), []byte("salt")...))
	if err := os.WriteFile(path, []byte("term-1:"+hash+base64.StdEncoding.EncodeToString(sum[:])+"\n"+
		"term-2:"+hash+base64.StdEncoding.EncodeToString(sum2[:])+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := ListenMQTT(MQTTConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir(),
		Auth: &Auth{PasswordFile: path, BridgeUser: "edgebridge", BridgePassword: "bridge-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.auth.fail.mu.Lock()
	m.auth.fail.window = 2 * time.Second
	m.auth.fail.mu.Unlock()
	login := func(user, password string) error {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + m.Addr()).SetClientID(user + "-probe").
			SetUsername(user).SetPassword(password).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return errors.New("no answer")
		}
		if tok.Error() == nil {
			c.Disconnect(0)
		}
		return tok.Error()
	}
	if err := login("term-1", "right-password"); err != nil {
		t.Fatalf("the right password: %v", err)
	}
	for i := range maxLoginFailures {
		if login("term-1", fmt.Sprintf("guess-%d", i)) == nil {
			t.Fatal("a wrong password was accepted")
		}
	}
	if login("term-1", "right-password") == nil {
		t.Fatal("the right password was checked after ten failures from the address")
	}
	if err := login("edgebridge", "bridge-secret"); err != nil {
		t.Fatalf("the bridge's account was locked out: %v", err)
	}
	if err := login("term-2", "right-password-2"); err != nil {
		t.Fatalf("another device at the same address was locked out: %v", err)
	}
	// paho tries MQTT 3.1.1, then 3.1: two refused CONNECTs per login.
	if got := m.LoginFailures(); got < maxLoginFailures+1 {
		t.Errorf("LoginFailures %d, want at least %d", got, maxLoginFailures+1)
	}
	deadline := time.Now().Add(10 * time.Second)
	for login("term-1", "right-password") != nil {
		if time.Now().After(deadline) {
			t.Fatal("the address was still refused 10s after its 2s window")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The broker records when each device was last seen logged in: written
// when it closes (and every 30 s), read back by `edgebridge device list`
// through package devices; the bridge's own account is not a device.
func TestLastSeenRecorded(t *testing.T) {
	dir := t.TempDir()
	reg := devices.Open(dir)
	if err := reg.AddPassword("term-1", []byte("term-1-password")); err != nil {
		t.Fatal(err)
	}
	if err := reg.AddPassword("term-2", []byte("term-2-password")); err != nil {
		t.Fatal(err)
	}
	seenFile := filepath.Join(dir, devices.SeenFile)
	m, err := ListenMQTT(MQTTConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir(),
		Auth: &Auth{PasswordFile: filepath.Join(dir, devices.PasswordFile), BridgeUser: "edgebridge", BridgePassword: "bridge-secret", SeenFile: seenFile}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	before := time.Now().Add(-time.Second)
	for user, pw := range map[string]string{"term-1": "term-1-password", "edgebridge": "bridge-secret"} {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + m.Addr()).SetClientID(user + "-probe").
			SetUsername(user).SetPassword(pw).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("%s: %v", user, tok.Error())
		}
		c.Disconnect(0)
	}
	m.Close()
	list, err := reg.List()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]time.Time{}
	for _, d := range list {
		seen[d.ID] = d.LastSeen
	}
	if seen["term-1"].Before(before) || seen["term-1"].After(time.Now()) || !seen["term-2"].IsZero() || len(seen) != 2 {
		t.Fatalf("last seen %v; want term-1 just now, term-2 never, the bridge not listed", seen)
	}
}
