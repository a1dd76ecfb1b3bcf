package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("backend:\n  targets: [\"10.0.0.5:7070\"]\n  window: 64\n"), 0o644)
	os.WriteFile(bad, []byte("kafka:\n  topic: \"no spaces\"\n  partitions: -3\nadmin:\n  listen: nowhere\n"), 0o644)

	out, err := exec.Command(bins.edgebridge, "validate", "-config", good).CombinedOutput()
	if err != nil {
		t.Fatalf("valid config: got %v\n%s", err, out)
	}
	out, err = exec.Command(bins.edgebridge, "validate", "-config", bad).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("invalid config: got %v, want a non-zero exit", err)
	}
	for _, want := range []string{"kafka.topic", "kafka.partitions", "admin.listen"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output does not list %s:\n%s", want, out)
		}
	}
	// A plain listener on the network is refused unless the config says
	// it accepts the risk; then it is valid, with a warning (exit 0).
	open := filepath.Join(dir, "open.yaml")
	os.WriteFile(open, []byte("mqtt:\n  embedded_listen: 0.0.0.0:1883\n"), 0o644)
	out, err = exec.Command(bins.edgebridge, "validate", "-config", open).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "mqtt.embedded_listen: 0.0.0.0:1883 takes devices from the network in clear text") {
		t.Errorf("validate of an open listener: %v, want refused:\n%s", err, out)
	}
	os.WriteFile(open, []byte("mqtt:\n  embedded_listen: 0.0.0.0:1883\n  embedded_allow_insecure: true\n"), 0o644)
	out, err = exec.Command(bins.edgebridge, "validate", "-config", open).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "warning: mqtt.embedded_listen 0.0.0.0:1883: any client on the network connects without a login") ||
		!strings.Contains(string(out), "config ok") {
		t.Errorf("validate of an open listener allowed insecure: %v, want exit 0 and a warning:\n%s", err, out)
	}
	// One typo and a bad value: both reported, each with its line.
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("mqtt:\n  brokr: tcp://127.0.0.1:1883\nbackend:\n  window: -1\n"), 0o644)
	out, _ = exec.Command(bins.edgebridge, "validate", "-config", typo).CombinedOutput()
	for _, want := range []string{`line 2: mqtt.brokr: unknown key; did you mean "broker"?`, "line 4: backend.window"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
}

// Every command answers -h with its flags and exit 0; version and
// --version print the version, commit, build time and Go version.
func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"run", "-h"}, {"demo", "-h"}, {"bench", "-h"}, {"broker", "-h"},
		{"broker", "kafka", "-h"}, {"validate", "-h"}, {"probe", "-h"}, {"site", "ca", "-h"}, {"device", "add", "-h"}} {
		out, err := exec.Command(bins.edgebridge, args...).CombinedOutput()
		if err != nil {
			t.Errorf("%v: got %v, want exit 0\n%s", args, err, out)
		}
		if args[0] != "-h" && !strings.Contains(string(out), "  -") {
			t.Errorf("%v lists no flags:\n%s", args, out)
		}
	}
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(bins.edgebridge, arg).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v", arg, err)
		}
		for _, want := range []string{"edgebridge ", "commit ", "built ", "go      go1."} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s printed %q, lacks %q", arg, out, want)
			}
		}
		if rev := gitRevision(); rev != "" && !strings.Contains(string(out), "commit  "+rev) {
			t.Errorf("%s: want commit %s (stamped at build):\n%s", arg, rev, out)
		}
	}
}

// probe exits 0 while the bridge is ready and 1 with the reasons when it
// is not, and -tcp while a port accepts connections; /metrics names the build; log.format json logs JSON lines.
func TestProbe(t *testing.T) {
	s := &stack{mqtt: mosquitto(t), kafka: kafkaBroker(t)}
	s.pay = startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
	cfg, admin := writeBridgeConfig(t, bridgeOpts{mqtt: s.mqtt, kafka: s.kafka, backend: s.pay.addr, top: "log:\n  format: json\n  level: debug\n"})
	s.bridge = startBridge(t, cfg, admin)
	for _, line := range strings.Split(strings.TrimSpace(s.bridge.Output()), "\n") {
		if !strings.HasPrefix(line, `{"time":`) {
			t.Errorf("log.format json: got line %q", line)
		}
	}
	url := "http://" + s.bridge.Admin + "/readyz"
	if out, err := exec.Command(bins.edgebridge, "probe", "-url", url).CombinedOutput(); err != nil {
		t.Fatalf("probe of a ready bridge: %v\n%s", err, out)
	}
	if !strings.Contains(s.bridge.metricsText(), "edgebridge_build_info{") {
		t.Error("/metrics lacks edgebridge_build_info")
	}
	// -tcp: the brokers' and paymentd's check in the image.
	if out, err := exec.Command(bins.edgebridge, "probe", "-tcp", s.pay.addr).CombinedOutput(); err != nil {
		t.Errorf("probe -tcp of a listening paymentd: %v\n%s", err, out)
	}
	s.pay.Kill()
	waitFor(t, 30*time.Second, "probe to fail without a backend", func() bool {
		out, err := exec.Command(bins.edgebridge, "probe", "-url", url).CombinedOutput()
		return err != nil && strings.Contains(string(out), "no backend stream up")
	})
	if out, err := exec.Command(bins.edgebridge, "probe", "-tcp", s.pay.addr).CombinedOutput(); err == nil || !strings.Contains(string(out), "refused") {
		t.Errorf("probe -tcp of a stopped paymentd: %v\n%s", err, out)
	}
}

// With the backend gone the window cannot drain: the first SIGTERM starts a
// drain that waits; the second aborts at once with a non-zero exit.
func TestSecondSignalAborts(t *testing.T) {
	s := newStack(t)
	ctx := withTimeout(t, 2*time.Minute)
	s.pay.Kill()
	cfg := devicesimConfig(s.mqtt, 3, 10)
	runDevices(ctx, cfg) // stopped by ctx at cleanup
	waitFor(t, 30*time.Second, "records in the window", func() bool {
		v, err := s.bridge.Metric("edgebridge_window_in_flight")
		return err == nil && v > 0
	})
	_ = s.bridge.Signal(syscall.SIGTERM)
	waitFor(t, 10*time.Second, "the drain to start", func() bool {
		return strings.Contains(s.bridge.Output(), "draining; signal again to abort")
	})
	select {
	case <-s.bridge.Done():
		t.Fatal("bridge exited although its window could not drain")
	default:
	}
	_ = s.bridge.Signal(syscall.SIGTERM)
	select {
	case <-s.bridge.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("second signal did not abort within 5s")
	}
	var exit *exec.ExitError
	if !errors.As(s.bridge.Err(), &exit) || exit.ExitCode() == 0 {
		t.Fatalf("got exit %v, want non-zero after an abort", s.bridge.Err())
	}
}
