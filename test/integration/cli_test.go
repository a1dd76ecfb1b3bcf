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
	out, _ = exec.Command(bins.edgebridge, "version").CombinedOutput()
	if !strings.HasPrefix(string(out), "edgebridge ") {
		t.Errorf("version printed %q", out)
	}
}

// With the backend gone the window cannot drain: the first SIGTERM starts a
// drain that waits; the second aborts at once with a non-zero exit.
func TestSecondSignalAborts(t *testing.T) {
	s := newStack(t)
	ctx := withTimeout(t, 2*time.Minute)
	s.pay.kill()
	cfg := devicesimConfig(s.mqtt, 3, 10)
	runDevices(ctx, cfg) // stopped by ctx at cleanup
	waitFor(t, 30*time.Second, "records in the window", func() bool {
		v, err := s.bridge.metric("edgebridge_window_in_flight")
		return err == nil && v > 0
	})
	_ = s.bridge.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 10*time.Second, "the drain to start", func() bool {
		return strings.Contains(s.bridge.out.String(), "draining; signal again to abort")
	})
	select {
	case <-s.bridge.done:
		t.Fatal("bridge exited although its window could not drain")
	default:
	}
	_ = s.bridge.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.bridge.done:
	case <-time.After(5 * time.Second):
		t.Fatal("second signal did not abort within 5s")
	}
	var exit *exec.ExitError
	if !errors.As(s.bridge.err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("got exit %v, want non-zero after an abort", s.bridge.err)
	}
}
