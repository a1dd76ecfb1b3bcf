package integration

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/proc"
	"github.com/edgebridge/edgebridge/transcoder"
)

// maxAge is the backend.max_request_age of these tests.
const maxAge = 2 * time.Second

// TestMaxRequestAgeExpires: with backend.max_request_age, requests that no
// backend could take within it (paymentd is not running) are dead-lettered
// and their devices told REJECTED; the backend, once it is up, processes
// none of them, and a new request is approved as usual.
func TestMaxRequestAgeExpires(t *testing.T) {
	payAddr, ledger := freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl")
	mqtt := mosquitto(t)
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: mqtt, kafka: "embedded", backend: payAddr,
		extra: "  max_request_age: " + maxAge.String() + "\n"})
	// With no backend up the bridge is not ready: wait until that is all
	// it lacks (requests written before its consumer first joined count as
	// possibly handed to a backend by an earlier run, and never expire).
	br := &bridgeProc{&proc.Bridge{Process: start(t, bins.edgebridge, "run", "-config", cfgPath), Admin: admin}}
	waitFor(t, time.Minute, "the bridge to be ready but for its backend", func() bool {
		_, why := br.Readyz()
		return strings.TrimSpace(why) == "not ready: no backend stream up"
	})

	devs := devicesim.Config{Broker: mqtt, Devices: 3, Requests: 10, Outstanding: 10, Drain: time.Minute}
	res, err := devicesim.Run(withTimeout(t, 2*time.Minute), devs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replied != 30 || res.ByStatus[transcoder.StatusRejected] != 30 {
		t.Fatalf("with no backend for longer than max_request_age: %d replies, statuses %v; want 30 REJECTED", res.Replied, res.ByStatus)
	}
	// The device's reply is published before the metric counts it.
	waitFor(t, 10*time.Second, "30 request_expired dead letters", func() bool {
		n, err := br.Metric(`edgebridge_dlq_messages_total{reason="request_expired"}`)
		return err == nil && n == 30
	})

	// The backend comes up: a new request is answered, and it is the only
	// one the backend ever processed.
	startPaymentd(t, payAddr, ledger)
	fresh := devicesim.Config{Broker: devs.Broker, Devices: 1, Requests: 1, DevicePrefix: "fresh", Drain: time.Minute}
	res, err = devicesim.Run(withTimeout(t, 2*time.Minute), fresh, nil)
	if err != nil || res.Replied != 1 || res.ByStatus[transcoder.StatusRejected] != 0 {
		t.Fatalf("a request once the backend is up: %d replies, statuses %v, %v", res.Replied, res.ByStatus, err)
	}
	checkLedger(t, ledger, fresh)
}

// TestMaxRequestAgeSpareWhatABackendMayHaveSeen: requests the bridge sent
// to a backend that then froze are not expired after a bridge crash, even
// once older than max_request_age: the backend may have processed them
// (here it did, from its socket buffer, once it thawed), so the restarted
// bridge delivers them again and the backend's dedup answers them. Every
// device gets its real answer, and each request is processed once.
func TestMaxRequestAgeSpareWhatABackendMayHaveSeen(t *testing.T) {
	pay := startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
	mqtt := mosquitto(t)
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: mqtt, kafka: "embedded", backend: pay.addr,
		extra: "  max_request_age: " + maxAge.String() + "\n"})
	br := startBridge(t, cfgPath, admin)

	signal(t, pay.Process, syscall.SIGSTOP) // the stream stays open; nothing is ACKed
	devs := devicesim.Config{Broker: mqtt, Devices: 2, Requests: 5, Outstanding: 5, Drain: 2 * time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := runDevices(ctx, devs)
	waitFor(t, 30*time.Second, "the bridge to hand all 10 requests to the backend", func() bool {
		n, err := br.Metric("edgebridge_window_in_flight")
		return err == nil && n == 10
	})
	published := time.Now()
	br.Kill()
	waitFor(t, 10*time.Second, "the requests to pass max_request_age", func() bool { return time.Since(published) > maxAge })
	signal(t, pay.Process, syscall.SIGCONT)
	startBridge(t, cfgPath, admin)

	res := <-results
	if res.Replied != 10 || res.ByStatus[transcoder.StatusRejected] != 0 {
		t.Fatalf("after the crash: %d replies, statuses %v; want 10, none REJECTED (a backend may have processed them)", res.Replied, res.ByStatus)
	}
	checkLedger(t, pay.ledger, devs)
}
