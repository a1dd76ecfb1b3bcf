package embedded

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgebridge/edgebridge/devices"
)

// Auth is who may connect to the embedded MQTT broker and what each may
// do: the rule of the shipped Mosquitto ACL. A device's identity is its
// username (checked against a Mosquitto password file) or, on a listener
// that requires client certificates, its certificate's CN; it may publish
// only payment/request/<id> and read only payment/response/<id> and
// device/<id>/command. The bridge's own account may do everything.
type Auth struct {
	// PasswordFile is in Mosquitto's format (mosquitto_passwd: $7$ PBKDF2
	// or $6$ salted SHA-512); read again when it changes.
	PasswordFile string
	// BridgeUser and BridgePassword are the bridge's account, kept in
	// memory only.
	BridgeUser, BridgePassword string
	// SeenFile, if set, records when the broker last saw each device
	// logged in (devices.SeenFile: what `edgebridge device list` shows),
	// written at most every seenInterval and when the broker closes.
	SeenFile string
}

// seenInterval is how often the last-seen times are written.
const seenInterval = 30 * time.Second

// seenLog is when each device was last seen logged in.
type seenLog struct {
	mu    sync.Mutex
	at    map[string]time.Time
	dirty bool
}

func (l *seenLog) mark(id string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.at == nil {
		l.at = map[string]time.Time{}
	}
	now = now.Truncate(time.Second).UTC()
	if !l.at[id].Equal(now) {
		l.at[id], l.dirty = now, true
	}
}

// flush writes the times to path if they changed since the last write.
func (l *seenLog) flush(path string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.dirty {
		return nil
	}
	if err := devices.WriteSeen(path, l.at); err != nil {
		return err
	}
	l.dirty = false
	return nil
}

// certListener is the id of the listener whose clients are identified by
// their client certificates.
const certListener = "tls-cert"

// authHook enforces Auth in mochi.
type authHook struct {
	mqtt.HookBase
	auth Auth
	pw   passwordFile
	fail failures
	seen seenLog
}

// After maxLoginFailures failed logins for one username from one address
// within loginFailureWindow, the broker refuses that username's logins
// from that address without checking them until the window has passed:
// guessing a device's password gets ten tries a minute per address. Per
// username too, because devices often share an address (a NAT, or K3s's
// ServiceLB rewriting sources to the node's): one terminal with a wrong
// password must not lock every other one out.
const (
	maxLoginFailures   = 10
	loginFailureWindow = time.Minute
)

// failures counts failed logins, in all and per remote address and
// username.
type failures struct {
	total  atomic.Int64
	mu     sync.Mutex
	by     map[string]*failWindow
	window time.Duration // loginFailureWindow; tests shorten it
}

type failWindow struct {
	start time.Time
	n     int
}

// blocked reports whether logins under key (address and username) are
// refused for now.
func (f *failures) blocked(key string, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.by[key]
	return w != nil && now.Sub(w.start) < f.windowLen() && w.n >= maxLoginFailures
}

// failed counts a failed or refused login under key.
func (f *failures) failed(key string, now time.Time) {
	f.total.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.by == nil {
		f.by = map[string]*failWindow{}
	}
	if len(f.by) > 4096 { // bounded: drop the windows that have passed
		for k, w := range f.by {
			if now.Sub(w.start) >= f.windowLen() {
				delete(f.by, k)
			}
		}
	}
	w := f.by[key]
	if w == nil || now.Sub(w.start) >= f.windowLen() {
		w = &failWindow{start: now}
		f.by[key] = w
	}
	w.n++
}

func (f *failures) windowLen() time.Duration {
	if f.window > 0 {
		return f.window
	}
	return loginFailureWindow
}

func remoteIP(cl *mqtt.Client) string {
	host, _, err := net.SplitHostPort(cl.Net.Remote)
	if err != nil {
		return cl.Net.Remote
	}
	return host
}

func (h *authHook) ID() string { return "edgebridge-device-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// OnConnectAuthenticate counts every refused login and refuses an
// address with too many of them (the bridge's own account excepted).
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	key, now := remoteIP(cl)+" "+string(pk.Connect.Username), time.Now()
	bridge := string(pk.Connect.Username) == h.auth.BridgeUser && h.auth.BridgeUser != "" && cl.Net.Listener != certListener
	if !bridge && h.fail.blocked(key, now) {
		h.fail.failed(key, now)
		return false
	}
	if h.authenticate(cl, pk) {
		if !bridge && h.auth.SeenFile != "" {
			h.seen.mark(string(cl.Properties.Username), now)
		}
		return true
	}
	h.fail.failed(key, now)
	return false
}

func (h *authHook) authenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if cl.Net.Listener == certListener {
		tc, ok := cl.Net.Conn.(*tls.Conn)
		if !ok {
			return false
		}
		certs := tc.ConnectionState().PeerCertificates
		if len(certs) == 0 {
			return false
		}
		id := certs[0].Subject.CommonName
		if id == "" || id == h.auth.BridgeUser || strings.ContainsAny(id, "+#/") {
			return false
		}
		cl.Properties.Username = []byte(id) // Mosquitto's use_identity_as_username
		return true
	}
	user, pass := string(pk.Connect.Username), pk.Connect.Password
	if user == "" {
		return false
	}
	if user == h.auth.BridgeUser {
		return h.auth.BridgePassword != "" && subtle.ConstantTimeCompare(pass, []byte(h.auth.BridgePassword)) == 1
	}
	if strings.ContainsAny(user, "+#/") {
		return false
	}
	return h.pw.check(user, pass)
}

func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id := string(cl.Properties.Username)
	if id == "" {
		return false
	}
	if id == h.auth.BridgeUser {
		return true // a certificate naming the bridge is refused at connect
	}
	if write {
		return topic == "payment/request/"+id
	}
	return topic == "payment/response/"+id || topic == "device/"+id+"/command"
}

// passwordFile is a Mosquitto password file, read again when its size or
// modification time changes.
type passwordFile struct {
	path  string
	mu    sync.Mutex
	stamp string
	users map[string]string // user -> the hash field
}

func (p *passwordFile) check(user string, password []byte) bool {
	if p.path == "" {
		return false
	}
	if _, err := p.load(); err != nil && p.users == nil {
		return false
	}
	p.mu.Lock()
	hash, ok := p.users[user]
	p.mu.Unlock()
	return ok && devices.VerifyPassword(hash, password)
}

// has reports whether user is in the file as last loaded.
func (p *passwordFile) has(user string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.users[user]
	return ok
}

// load reads the file again if it changed, and reports whether it did.
func (p *passwordFile) load() (changed bool, err error) {
	st, err := os.Stat(p.path)
	if err != nil {
		return false, err
	}
	stamp := fmt.Sprintf("%d:%d:%d", st.ModTime().UnixNano(), st.Size(), inode(st))
	p.mu.Lock()
	same := stamp == p.stamp
	p.mu.Unlock()
	if same {
		return false, nil
	}
	users, err := readPasswordFile(p.path)
	if err != nil {
		return false, err // keep the last good file
	}
	p.mu.Lock()
	p.stamp, p.users = stamp, users
	p.mu.Unlock()
	return true, nil
}

// inode tells a file replaced by a rename (edgebridge device) from the one
// before, even within the modification time's resolution.
func inode(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}

// errDeviceRemoved ends the connections of a device removed from the
// password file.
var errDeviceRemoved = errors.New("embedded: the device's password was removed")

// errCertRevoked ends the connections of a device whose certificate was
// revoked.
var errCertRevoked = errors.New("embedded: the device's certificate was revoked")

// watchIdentities closes, checking every second until stop is closed, the
// open connections of devices whose password was removed from the file or
// whose certificate revoked (revoked, may be nil): edgebridge device
// remove. Their next login is refused anyway; they must not keep a
// connection opened before.
//
// It also marks every device connected as seen, and writes the last-seen
// times (Auth.SeenFile) every seenInterval and when stop is closed.
func (h *authHook) watchIdentities(s *mqtt.Server, revoked func(*x509.Certificate) bool, stop <-chan struct{}, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastFlush := time.Now()
	flush := func() {
		if h.auth.SeenFile == "" {
			return
		}
		if err := h.seen.flush(h.auth.SeenFile); err != nil {
			log.Warn("embedded: mqtt: cannot record when devices were last seen", "file", h.auth.SeenFile, "err", err)
		}
		lastFlush = time.Now()
	}
	defer flush()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			if now.Sub(lastFlush) >= seenInterval {
				flush()
			}
		}
		pwChanged := false
		if h.pw.path != "" {
			changed, err := h.pw.load()
			pwChanged = err == nil && changed
		}
		for _, cl := range s.Clients.GetAll() {
			user := string(cl.Properties.Username)
			if cl.Net.Inline || user == "" || user == h.auth.BridgeUser || cl.Closed() {
				continue
			}
			if h.auth.SeenFile != "" {
				h.seen.mark(user, time.Now())
			}
			if cl.Net.Listener == certListener {
				if tc, ok := cl.Net.Conn.(*tls.Conn); ok && revoked != nil {
					if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 && revoked(certs[0]) {
						cl.Stop(errCertRevoked)
					}
				}
				continue
			}
			if pwChanged && !h.pw.has(user) {
				cl.Stop(errDeviceRemoved)
			}
		}
	}
}

// readPasswordFile parses user:hash lines; blank lines and # comments are
// skipped.
func readPasswordFile(path string) (map[string]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" || !strings.HasPrefix(hash, "$") {
			return nil, fmt.Errorf("embedded: %s line %d: want user:$hash (mosquitto_passwd)", path, n)
		}
		users[user] = hash
	}
	return users, sc.Err()
}
