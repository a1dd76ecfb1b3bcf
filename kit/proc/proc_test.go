package proc

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/internal/await"
)

func TestStopAndOutput(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	p, err := Start([]string{"PROC_TEST=hello"}, sh, "-c", `echo "$PROC_TEST"; trap 'echo bye; exit 3' TERM; while :; do sleep 0.01; done`)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	await.True(t, 10*time.Second, "the greeting", func() bool { return strings.Contains(p.Output(), "hello") })
	if err := p.Exited(); err != nil {
		t.Fatalf("running, but Exited says %v", err)
	}
	err = p.Stop(10 * time.Second)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("Stop: %v, want exit status 3 from the TERM trap", err)
	}
	if err := p.Exited(); err == nil || !strings.Contains(err.Error(), "bye") {
		t.Fatalf("Exited: %v, want the exit with the output's tail", err)
	}
}

// A process that ignores SIGTERM is killed at the limit.
func TestStopKillsAtTheLimit(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	p, err := Start(nil, sh, "-c", `trap '' TERM; echo up; while :; do sleep 0.01; done`)
	if err != nil {
		t.Fatal(err)
	}
	await.True(t, 10*time.Second, "the trap set", func() bool { return strings.Contains(p.Output(), "up") })
	if err := p.Stop(100 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "did not exit within") {
		t.Fatalf("Stop: %v", err)
	}
	<-p.Done()
}

// The bridge config the tests and the bench run with is one the product
// accepts.
func TestBridgeConfigIsValid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "edgebridge.yaml")
	c := BridgeConfig{MQTT: "tcp://127.0.0.1:1883", ClientID: "bridge-test", Kafka: []string{"127.0.0.1:9092", "127.0.0.1:9093"},
		DataDir: t.TempDir(), Backend: "127.0.0.1:50051", Admin: "127.0.0.1:0", BackendExtra: "  window: 64\n", Top: "shutdown:\n  drain_timeout: 3s\n"}
	if err := c.Write(path); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, c.YAML())
	}
	if len(cfg.Kafka.Brokers) != 2 || cfg.Backend.Window != 64 || cfg.Shutdown.DrainTimeout != 3*time.Second || cfg.MQTT.Subscribe[0] != "payment/request/+" {
		t.Fatalf("loaded %+v", cfg)
	}
}

func TestAwaitReadyFailsWhenTheBridgeExits(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	p, err := Start(nil, sh, "-c", "echo cannot start; exit 1")
	if err != nil {
		t.Fatal(err)
	}
	b := &Bridge{Process: p, Admin: "127.0.0.1:1"}
	err = b.AwaitReady(context.Background(), time.Minute)
	if err == nil || !strings.Contains(err.Error(), "cannot start") {
		t.Fatalf("AwaitReady: %v", err)
	}
}

// FreeAddrs hands one process's listeners different ports, each free.
func TestFreeAddrsDiffer(t *testing.T) {
	addrs, err := FreeAddrs(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s handed out twice in %v", a, addrs)
		}
		seen[a] = true
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("%s is not free: %v", a, err)
		}
		ln.Close()
	}
}
