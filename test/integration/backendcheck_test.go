package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/kit/devicesim"
)

// pythonBackend is the example backend of examples/python-backend, run
// with Debian's python3 and python3-grpcio (the test command installs them).
const pythonBackend = "../../examples/python-backend/paymentd.py"

func startPythonBackend(t *testing.T, addr, ledger string) *paymentd {
	t.Helper()
	if out, err := exec.Command("/usr/bin/python3", "-c", "import grpc").CombinedOutput(); err != nil {
		t.Fatalf("python3-grpcio missing (apt-get install -y python3-grpcio): %v %s", err, out)
	}
	p := start(t, "/usr/bin/python3", pythonBackend, "-listen", addr, "-ledger", ledger)
	waitFor(t, 20*time.Second, "the python backend to listen", func() bool { return dialable(addr) })
	return &paymentd{Process: p, addr: addr, ledger: ledger}
}

// TestPythonBackend: the second-language reference backend behind the real
// bridge: 10 devices x 50 requests, all answered with the right status;
// the backend SIGKILLed and restarted mid-run: nothing lost, nothing
// processed twice, per-device order kept (its durable ledger has
// paymentd's format, so the same audit reads it).
func TestPythonBackend(t *testing.T) {
	mqtt, kafka := mosquitto(t), kafkaBroker(t)
	ledger := filepath.Join(t.TempDir(), "ledger.jsonl")
	py := startPythonBackend(t, freeAddr(t), ledger)
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: mqtt, kafka: kafka, backend: py.addr})
	bridge := startBridge(t, cfgPath, admin)

	ctx := withTimeout(t, 4*time.Minute)
	cfg := devicesim.Config{Broker: mqtt, Devices: 10, Requests: 50, Outstanding: 4, Counters: new(devicesim.Counters)}
	done := runDevices(ctx, cfg)
	waitFor(t, time.Minute, "the first 100 replies", func() bool { return cfg.Counters.Replied.Load() >= 100 })
	py.Kill()
	if n := cfg.Counters.Replied.Load(); n >= int64(cfg.Devices*cfg.Requests) {
		t.Fatalf("all %d replies arrived before the kill: the test proves nothing", n)
	}
	py = startPythonBackend(t, py.addr, ledger)

	checkDevices(t, <-done, cfg)
	if err := bridge.Stop(30 * time.Second); err != nil {
		t.Fatalf("bridge exit: %v", err)
	}
	checkLedger(t, ledger, cfg)
}

// TestBackendCheck: `edgebridge backend-check` passes against paymentd and
// the Python example backend, keepalive rule included.
func TestBackendCheck(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(t *testing.T, addr, ledger string) *paymentd
	}{
		{"paymentd", func(t *testing.T, addr, ledger string) *paymentd { return startPaymentd(t, addr, ledger) }},
		{"python", startPythonBackend},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := tc.start(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
			out, err := exec.Command(bins.edgebridge, "backend-check", "-keepalive", "-target", b.addr).CombinedOutput()
			if err != nil {
				t.Fatalf("backend-check: %v\n%s", err, out)
			}
			for _, rule := range []string{"handshake", "heartbeat", "ack", "credits", "ack-match", "duplicate", "conflict", "invalid", "health", "keepalive"} {
				if !lineHas(string(out), rule+" ", " pass ") {
					t.Errorf("rule %s did not pass:\n%s", rule, out)
				}
			}
		})
	}
}

// lineHas reports whether a line of out starts with prefix and contains sub.
func lineHas(out, prefix, sub string) bool {
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, prefix) && strings.Contains(line, sub) {
			return true
		}
	}
	return false
}
