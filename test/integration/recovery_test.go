package integration

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/proc"
)

// TestBridgeKillRecovery: a bridge killed with SIGKILL and started again
// at once serves devices again within a bound, measured from the signal as
// a device sees it; /readyz stays 503 until replies can flow. Nothing is
// lost or processed twice. With Kafka as its own process the group would
// hold the dead member's partitions for kafka.session_timeout (6 s): the
// restarted bridge removes its predecessor from the group first (the
// member id it keeps in kafka.data_dir).
func TestBridgeKillRecovery(t *testing.T) {
	t.Run("kafka process", func(t *testing.T) { bridgeKillRecovery(t, kafkaBroker(t)) })
	// The broker runs in the bridge and dies with it, and its group with
	// it: the restarted bridge owns the partitions at once.
	t.Run("kafka in-process", func(t *testing.T) { bridgeKillRecovery(t, "embedded") })
}

// bridgeKillRecovery measures one SIGKILL of a bridge using kafka.
func bridgeKillRecovery(t *testing.T, kafka string) {
	const session = 6 * time.Second
	const bound = 4 * time.Second // process start, group join, first delivery, under -race on 2 cores
	mqtt := mosquitto(t)
	pay := startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
	extra := "  session_timeout: 6s\n  data_dir: " + t.TempDir() + "\n"
	if kafka == "embedded" {
		extra += "  embedded_listen: 127.0.0.1:0\n"
	}
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: mqtt, kafka: kafka, backend: pay.addr, kafkaExtra: extra})
	br := startBridge(t, cfgPath, admin)

	ctx := withTimeout(t, 3*time.Minute)
	cfg := devicesim.Config{Broker: mqtt, Devices: 5, Requests: 300, Outstanding: 1, Rate: 50, Counters: new(devicesim.Counters)}
	done := runDevices(ctx, cfg)
	waitFor(t, time.Minute, "the first 100 replies", func() bool { return cfg.Counters.Replied.Load() >= 100 })

	killed := time.Now()
	br.Kill()
	// Replies the old bridge published may still land after the kill, at
	// most one per outstanding request; more than that came from the new one.
	base := cfg.Counters.Replied.Load() + int64(cfg.Devices*cfg.Outstanding)
	br = &bridgeProc{&proc.Bridge{Process: start(t, bins.edgebridge, "run", "-config", cfgPath), Admin: admin}}
	var ready, replied time.Time
	for time.Since(killed) < bound+10*time.Second && replied.IsZero() {
		if code, _ := br.Readyz(); code == http.StatusOK && ready.IsZero() {
			ready = time.Now()
		}
		if cfg.Counters.Replied.Load() > base {
			replied = time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}
	if replied.IsZero() {
		t.Fatalf("no reply within %s of the kill", time.Since(killed))
	}
	t.Logf("recovery from SIGKILL (kafka %s, session timeout %s): replies flow %s after the signal; /readyz 200 after %s",
		kafka, session, replied.Sub(killed).Round(time.Millisecond), ready.Sub(killed).Round(time.Millisecond))
	if got := replied.Sub(killed); got > bound {
		t.Errorf("replies flowed %s after the kill, want within %s", got, bound)
	}
	if !ready.IsZero() && replied.Sub(ready) > 1500*time.Millisecond {
		t.Errorf("/readyz said 200 %s before replies flowed, want at most 1.5s", replied.Sub(ready))
	}
	checkDevices(t, <-done, cfg)
	if err := br.Stop(30 * time.Second); err != nil {
		t.Fatalf("bridge exit: %v", err)
	}
	checkLedger(t, pay.ledger, cfg)
}

// A session timeout the broker refuses (below its 6 s minimum) keeps the
// bridge out of the consumer group: /readyz says so, with the broker's
// reason, instead of waiting for partitions that never come.
func TestReadyzNamesRefusedJoin(t *testing.T) {
	mqtt, kafka := mosquitto(t), kafkaBroker(t)
	pay := startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: mqtt, kafka: kafka, backend: pay.addr, kafkaExtra: "  session_timeout: 2s\n"})
	br := &bridgeProc{&proc.Bridge{Process: start(t, bins.edgebridge, "run", "-config", cfgPath), Admin: admin}}
	var body string
	waitFor(t, time.Minute, "/readyz to name the refused join", func() bool {
		var code int
		code, body = br.Readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "kafka consumer group: join refused: ")
	})
	if !strings.Contains(body, "Invalid Session Timeout") {
		t.Errorf("/readyz does not give the broker's reason:\n%s", body)
	}
}
