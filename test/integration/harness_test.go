// Package integration drives the real edgebridge and paymentd binaries
// against a real Mosquitto and a Kafka-protocol broker, with faults.
//
// Set EDGEBRIDGE_SKIP_INTEGRATION=1 to skip these tests (CI never does).
package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	mosquittoconf "github.com/edgebridge/edgebridge/deploy/mosquitto"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/kit/proc"
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
	addr, err := proc.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// freeAddrs is n different free addresses, for one process's listeners.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs, err := proc.FreeAddrs(n)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

func start(t testing.TB, name string, args ...string) *proc.Process {
	t.Helper()
	return startEnv(t, nil, name, args...)
}

// startEnv runs name with extra environment variables (KEY=value); it is
// killed at cleanup, and its output logged if the test failed.
func startEnv(t testing.TB, env []string, name string, args ...string) *proc.Process {
	t.Helper()
	p, err := proc.Start(env, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("--- %s (pid %d) output (tail) ---\n%s", p.Name, p.PID(), tail(p.Output(), 4000))
		}
	})
	return p
}

func tail(s string, n int) string { return proc.Tail(s, n) }

// waitFor polls cond every 20ms until it holds or limit passes.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	await.True(t, limit, what, cond)
}

func dialable(addr string) bool { return proc.Dial(addr) == nil }

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
	p          *proc.Process
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

// saved waits until Mosquitto has written its persistence file after
// since (it autosaves every second): the file then holds the sessions and
// subscriptions made before since.
func (m *mosq) saved(since time.Time) {
	m.t.Helper()
	path := filepath.Join(filepath.Dir(m.conf), "mosquitto.db")
	waitFor(m.t, 30*time.Second, "Mosquitto's autosave", func() bool {
		fi, err := os.Stat(path)
		return err == nil && fi.ModTime().After(since)
	})
}

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
func startBroker(t *testing.T, kind, addr, dir string, extra ...string) *proc.Process {
	t.Helper()
	return startBrokerBin(t, bins.edgebridge, kind, addr, dir, extra...)
}

// startBrokerBin is startBroker running bin.
func startBrokerBin(t *testing.T, bin, kind, addr, dir string, extra ...string) *proc.Process {
	t.Helper()
	p := start(t, bin, append([]string{"broker", kind, "-listen", addr, "-data", dir, "-partitions", "8"}, extra...)...)
	waitFor(t, 20*time.Second, kind+" broker listening", func() bool { return dialable(addr) })
	return p
}

type paymentd struct {
	*proc.Process
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
	return &paymentd{Process: p, addr: addr, ledger: ledger}
}

type bridgeProc struct{ *proc.Bridge }

type bridgeOpts struct {
	mqtt, kafka, backend string // backend "": no targets (Dapr only)
	extra                string // more YAML, appended under backend:
	top                  string // more top-level YAML (e.g. a dapr: section)
	mqttExtra            string // more YAML under mqtt: (indented two spaces)
	kafkaExtra           string // more YAML under kafka: (indented two spaces)
	clientID             string // default: bridge-<test name>
	subscribe            string // default: payment/request/+
}

// writeBridgeConfig writes the config of a bridge with the tests' faster
// reconnects and heartbeats.
func writeBridgeConfig(t *testing.T, o bridgeOpts) (path, admin string) {
	t.Helper()
	c := proc.BridgeConfig{MQTT: o.mqtt, ClientID: o.clientID, Subscribe: o.subscribe, Kafka: []string{o.kafka}, Backend: o.backend,
		Admin: freeAddr(t), MQTTExtra: o.mqttExtra, KafkaExtra: o.kafkaExtra,
		BackendExtra: "  window: 128\n  reconnect:\n    initial: 200ms\n    max: 1s\n  heartbeat:\n    interval: 1s\n    timeout: 5s\n" + o.extra,
		Top:          "shutdown:\n  drain_timeout: 20s\n" + o.top}
	if c.ClientID == "" {
		c.ClientID = "bridge-" + strings.ReplaceAll(t.Name(), "/", "-")
	}
	if !strings.Contains(o.kafkaExtra, "data_dir:") {
		c.DataDir = t.TempDir()
	}
	path = filepath.Join(t.TempDir(), "edgebridge.yaml")
	if err := c.Write(path); err != nil {
		t.Fatal(err)
	}
	return path, c.Admin
}

func startBridge(t *testing.T, cfgPath, admin string) *bridgeProc {
	t.Helper()
	return startBridgeBin(t, bins.edgebridge, cfgPath, admin)
}

// startBridgeBin runs "bin run -config cfgPath" and waits until it is ready.
func startBridgeBin(t *testing.T, bin, cfgPath, admin string) *bridgeProc {
	t.Helper()
	b := &bridgeProc{&proc.Bridge{Process: start(t, bin, "run", "-config", cfgPath), Admin: admin}}
	t.Cleanup(func() { // runs before the process is killed
		if t.Failed() {
			t.Logf("--- bridge metrics at failure ---\n%s", b.metricsText())
		}
	})
	if err := b.AwaitReady(context.Background(), 60*time.Second); err != nil {
		t.Fatal(err)
	}
	return b
}

// metricsText is the bridge's own series, without histogram buckets.
func (b *bridgeProc) metricsText() string {
	text, err := b.Metrics()
	if err != nil {
		return err.Error()
	}
	var keep []string
	for line := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(line, "edgebridge_") && !strings.Contains(line, "_bucket") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// closedCleanly reports whether the bridge logged that it stopped with an
// empty window.
func (b *bridgeProc) closedCleanly() bool {
	return strings.Contains(b.Output(), `msg="bridge: intake stopped" in_flight=0`)
}
