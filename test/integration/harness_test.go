// Package integration drives the real edgebridge and paymentd binaries
// against a real Mosquitto and a Kafka-protocol broker, with faults.
//
// Set EDGEBRIDGE_SKIP_INTEGRATION=1 to skip these tests (CI never does).
package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	mosquittoconf "github.com/edgebridge/edgebridge/deploy/mosquitto"
	"github.com/edgebridge/edgebridge/internal/syncbuf"
)

var bins struct {
	edgebridge, paymentd string
	// Built without -race: for memory figures.
	edgebridgeNoRace, paymentdNoRace string
}

func TestMain(m *testing.M) {
	if os.Getenv("EDGEBRIDGE_SKIP_INTEGRATION") == "1" {
		fmt.Println("integration: skipped (EDGEBRIDGE_SKIP_INTEGRATION=1)")
		os.Exit(0)
	}
	if _, err := exec.LookPath("mosquitto"); err != nil {
		fmt.Fprintln(os.Stderr, "integration: mosquitto not on PATH: apt-get install -y mosquitto (or set EDGEBRIDGE_SKIP_INTEGRATION=1)")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "edgebridge-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.edgebridge = filepath.Join(dir, "edgebridge")
	bins.paymentd = filepath.Join(dir, "paymentd")
	bins.edgebridgeNoRace = filepath.Join(dir, "edgebridge-norace")
	bins.paymentdNoRace = filepath.Join(dir, "paymentd-norace")
	for _, b := range []struct {
		out, pkg string
		race     bool
	}{
		{bins.edgebridge, "../../cmd/edgebridge", true},
		{bins.paymentd, "../../cmd/paymentd", true},
		{bins.edgebridgeNoRace, "../../cmd/edgebridge", false},
		{bins.paymentdNoRace, "../../cmd/paymentd", false},
	} {
		// The revision as make image stamps it (GOFLAGS may turn the go
		// command's own VCS stamp off).
		args := []string{"build", "-ldflags", "-X main.revision=" + gitRevision(), "-o", b.out, b.pkg}
		if b.race {
			args = slices.Insert(args, 1, "-race")
		}
		cmd := exec.Command("go", args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "integration: build", b.pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// gitRevision is the commit checked out, or "" outside a git checkout.
func gitRevision() string {
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is a child process the test started; it is killed at cleanup.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
	err  error
}

func start(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, name, args...)
}

// startEnv is start with extra environment variables (KEY=value).
func startEnv(t testing.TB, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: filepath.Base(name), cmd: exec.Command(name, args...), out: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// A child the process left behind (a script's) may hold the output
	// pipe: Wait gives up on it this long after the process exits.
	p.cmd.WaitDelay = 5 * time.Second
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s (pid %d) output (tail) ---\n%s", p.name, p.cmd.Process.Pid, tail(p.out.String(), 4000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// kill SIGKILLs the process (by its own PID) and waits for it.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to limit for the exit; it returns the exit error.
func (p *proc) stop(t *testing.T, limit time.Duration) error {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.err
	case <-timer.C:
		p.kill()
		return fmt.Errorf("%s did not exit within %s after SIGTERM", p.name, limit)
	}
}

// waitFor polls cond every 20ms until it holds or limit passes.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// mosquitto starts a real Mosquitto with the project's shipped settings on a
// free port, persistence in a temp dir.
func mosquitto(t *testing.T) (url string) {
	return startMosquitto(t).url()
}

// mosq is a Mosquitto process that can be stopped and started again on the
// same port with the same persistence file.
type mosq struct {
	t          *testing.T
	addr, conf string
	p          *proc
}

func startMosquitto(t *testing.T) *mosq {
	t.Helper()
	return startMosquittoConf(t, "")
}

// startMosquittoConf is startMosquitto with more configuration lines,
// which override the shipped ones.
func startMosquittoConf(t *testing.T, extra string) *mosq {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	portN, _ := strconv.Atoi(port)
	conf := mosquittoconf.Local(portN, dir) + "# test: publish $SYS every second\nsys_interval 1\n" + extra
	m := &mosq{t: t, addr: addr, conf: filepath.Join(dir, "mosquitto.conf")}
	if err := os.WriteFile(m.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	m.start()
	return m
}

func (m *mosq) url() string { return "tcp://" + m.addr }

// dropped reads Mosquitto's count of messages it dropped (queue limits),
// from $SYS once it has been published after call time.
func (m *mosq) dropped() (int, error) {
	got := make(chan string, 16)
	c := paho.NewClient(paho.NewClientOptions().AddBroker(m.url()).SetClientID("sys-reader"))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return 0, fmt.Errorf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	c.Subscribe("$SYS/broker/publish/messages/dropped", 0, func(_ paho.Client, msg paho.Message) { got <- string(msg.Payload()) })
	select {
	case v := <-got:
		return strconv.Atoi(strings.TrimSpace(v))
	case <-time.After(5 * time.Second):
		return 0, errors.New("no $SYS/broker/publish/messages/dropped within 5s (Mosquitto keeps it 60 s after a change: see watchDropped)")
	}
}

// watchDropped subscribes to Mosquitto's count of dropped messages and
// returns the last value it published. Mosquitto publishes it when it
// changes, retained for 60 s only: a reader that subscribes later than
// that after the last change gets nothing (dropped), so a test longer
// than a minute watches from its start.
func (m *mosq) watchDropped(t *testing.T) func() int {
	t.Helper()
	var mu sync.Mutex
	last, seen := 0, false
	c := paho.NewClient(paho.NewClientOptions().AddBroker(m.url()).SetClientID("sys-watcher").SetAutoReconnect(true))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	c.Subscribe("$SYS/broker/publish/messages/dropped", 0, func(_ paho.Client, msg paho.Message) {
		n, err := strconv.Atoi(strings.TrimSpace(string(msg.Payload())))
		if err == nil {
			mu.Lock()
			last, seen = n, true
			mu.Unlock()
		}
	}).Wait()
	waitFor(t, 10*time.Second, "Mosquitto's dropped count", func() bool { mu.Lock(); defer mu.Unlock(); return seen })
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
}

// start runs Mosquitto and waits until it accepts connections.
func (m *mosq) start() {
	m.t.Helper()
	m.p = start(m.t, "mosquitto", "-c", m.conf)
	waitFor(m.t, 10*time.Second, "mosquitto to listen", func() bool { return dialable(m.addr) })
}

// kafkaBroker starts the embedded Kafka-protocol broker in the test process.
func kafkaBroker(t *testing.T) string {
	t.Helper()
	addr := freeAddr(t)
	startBroker(t, "kafka", addr, t.TempDir())
	return addr
}

// startBroker runs "edgebridge broker KIND" as its own process, with extra
// flags, and waits until it accepts connections.
func startBroker(t *testing.T, kind, addr, dir string, extra ...string) *proc {
	t.Helper()
	return startBrokerBin(t, bins.edgebridge, kind, addr, dir, extra...)
}

// startBrokerBin is startBroker running bin.
func startBrokerBin(t *testing.T, bin, kind, addr, dir string, extra ...string) *proc {
	t.Helper()
	p := start(t, bin, append([]string{"broker", kind, "-listen", addr, "-data", dir, "-partitions", "8"}, extra...)...)
	waitFor(t, 20*time.Second, kind+" broker listening", func() bool { return dialable(addr) })
	return p
}

type paymentd struct {
	*proc
	addr, ledger string
}

func startPaymentd(t *testing.T, addr, ledger string, extra ...string) *paymentd {
	t.Helper()
	return startPaymentdBin(t, bins.paymentd, addr, ledger, extra...)
}

func startPaymentdBin(t *testing.T, bin, addr, ledger string, extra ...string) *paymentd {
	t.Helper()
	p := start(t, bin, append([]string{"-listen", addr, "-ledger", ledger}, extra...)...)
	waitFor(t, 20*time.Second, "paymentd to listen", func() bool { return dialable(addr) })
	return &paymentd{proc: p, addr: addr, ledger: ledger}
}

type bridgeProc struct {
	*proc
	admin string
}

type bridgeOpts struct {
	mqtt, kafka, backend string // backend "": no targets (Dapr only)
	extra                string // more YAML, appended under backend:
	top                  string // more top-level YAML (e.g. a dapr: section)
	mqttExtra            string // more YAML under mqtt: (indented two spaces)
	kafkaExtra           string // more YAML under kafka: (indented two spaces)
	clientID             string // default: bridge-<test name>
	subscribe            string // default: payment/request/+
}

func writeBridgeConfig(t *testing.T, o bridgeOpts) (path, admin string) {
	t.Helper()
	admin = freeAddr(t)
	if o.clientID == "" {
		o.clientID = "bridge-" + strings.ReplaceAll(t.Name(), "/", "-")
	}
	if o.subscribe == "" {
		o.subscribe = "payment/request/+"
	}
	if !strings.Contains(o.kafkaExtra, "data_dir:") {
		// The bridge keeps files there with an external Kafka too.
		o.kafkaExtra += "  data_dir: " + t.TempDir() + "\n"
	}
	targets := ""
	if o.backend != "" {
		targets = `"` + o.backend + `"`
	}
	doc := fmt.Sprintf(`mqtt:
  broker: %s
  client_id: %s
  subscribe: ["%s"]
  reply_topic: "payment/response/{device_id}"
%skafka:
  brokers: ["%s"]
  topic: edgebridge.payment.requests
  dlq_topic: edgebridge.payment.dlq
  group_id: edgebridge
%sbackend:
  targets: [%s]
  window: 128
  reconnect:
    initial: 200ms
    max: 1s
  heartbeat:
    interval: 1s
    timeout: 5s
%sadmin:
  listen: %s
shutdown:
  drain_timeout: 20s
%s`, o.mqtt, o.clientID, o.subscribe, o.mqttExtra, o.kafka, o.kafkaExtra, targets, o.extra, admin, o.top)
	path = filepath.Join(t.TempDir(), "edgebridge.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, admin
}

func startBridge(t *testing.T, cfgPath, admin string) *bridgeProc {
	t.Helper()
	return startBridgeBin(t, bins.edgebridge, cfgPath, admin)
}

// startBridgeBin runs "bin run -config cfgPath" and waits until it is ready.
func startBridgeBin(t *testing.T, bin, cfgPath, admin string) *bridgeProc {
	t.Helper()
	p := start(t, bin, "run", "-config", cfgPath)
	b := &bridgeProc{proc: p, admin: admin}
	t.Cleanup(func() { // runs before the process is killed
		if t.Failed() {
			t.Logf("--- bridge metrics at failure ---\n%s", b.metricsText())
		}
	})
	waitFor(t, 60*time.Second, "bridge /readyz", func() bool {
		select {
		case <-p.done:
			t.Fatalf("bridge exited early: %v\n%s", p.err, tail(p.out.String(), 3000))
		default:
		}
		return b.ready()
	})
	return b
}

func (b *bridgeProc) ready() bool {
	code, _ := b.readyz()
	return code == http.StatusOK
}

// readyz returns /readyz's status code and body (0 when unreachable).
func (b *bridgeProc) readyz() (int, string) {
	resp, err := http.Get("http://" + b.admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String()
}

func (b *bridgeProc) metricsText() string {
	resp, err := http.Get("http://" + b.admin + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	var keep []string
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, "edgebridge_") && !strings.Contains(line, "_bucket") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// metric returns the value of a metric from /metrics; name carries its
// labels as the exposition writes them, e.g. x_total{event="a"}.
func (b *bridgeProc) metric(name string) (float64, error) {
	resp, err := http.Get("http://" + b.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return 0, err
	}
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, name+" ") {
			var v float64
			_, err := fmt.Sscanf(strings.TrimPrefix(line, name+" "), "%g", &v)
			return v, err
		}
	}
	return 0, errors.New("metric " + name + " not found")
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// closedCleanly reports whether the bridge logged that it stopped with an
// empty window.
func (b *bridgeProc) closedCleanly() bool {
	return strings.Contains(b.out.String(), `msg="bridge: intake stopped" in_flight=0`)
}
