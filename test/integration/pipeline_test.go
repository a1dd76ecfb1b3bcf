package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kgo"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/payment"
	"github.com/edgebridge/edgebridge/transcoder"
)

// stack is one test's brokers, backend and bridge.
type stack struct {
	mqtt, kafka string
	pay         *paymentd
	bridge      *bridgeProc
	cfgPath     string
}

func newStack(t *testing.T) *stack {
	t.Helper()
	s := &stack{mqtt: mosquitto(t), kafka: kafkaBroker(t)}
	s.pay = startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
	var admin string
	s.cfgPath, admin = writeBridgeConfig(t, bridgeOpts{mqtt: s.mqtt, kafka: s.kafka, backend: s.pay.addr})
	s.bridge = startBridge(t, s.cfgPath, admin)
	return s
}

// runDevices drives devices in the background; cfg.Counters shows progress.
func runDevices(ctx context.Context, cfg devicesim.Config) <-chan devicesim.Result {
	out := make(chan devicesim.Result, 1)
	go func() {
		res, err := devicesim.Run(ctx, cfg, nil)
		if err != nil {
			res.Missing = append(res.Missing, "devices failed: "+err.Error())
		}
		out <- res
	}()
	return out
}

// checkLedger asserts the backend processed exactly the requests the devices
// of cfgs sent, each once, and per device in publish order.
func checkLedger(t *testing.T, path string, cfgs ...devicesim.Config) {
	t.Helper()
	entries, err := payment.ReadLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, cfg := range cfgs {
		want += cfg.Devices * cfg.Requests
	}
	for _, e := range entries {
		if e.MessageID != v1.MessageID(e.DeviceID, e.RequestID) {
			t.Errorf("ledger entry %+v: message id not derived from device and request id", e)
		}
	}
	a := devicesim.AuditLedger(entries)
	if a.Twice != 0 {
		t.Errorf("got %d messages processed twice, want 0", a.Twice)
	}
	if len(a.Processed) != want {
		t.Errorf("got %d unique messages in the ledger, want %d", len(a.Processed), want)
	}
	if a.Reordered != 0 {
		t.Errorf("got %d per-device order violations at the backend, want 0", a.Reordered)
	}
	for _, cfg := range cfgs {
		for i := 1; i <= cfg.Devices; i++ {
			dev := cfg.DeviceID(i)
			for n := range cfg.Requests {
				if !a.Processed[dev+"/"+devicesim.RequestID(n)] {
					t.Errorf("request %s/%s never reached the backend", dev, devicesim.RequestID(n))
					return
				}
			}
		}
	}
}

func checkDevices(t *testing.T, res devicesim.Result, cfg devicesim.Config) {
	t.Helper()
	want := cfg.Devices * cfg.Requests
	if res.Replied != want || len(res.Missing) > 0 {
		t.Fatalf("got %d replies, want %d; missing (first 5): %v", res.Replied, want, res.Missing[:min(5, len(res.Missing))])
	}
	declined := want / 10
	if res.ByStatus[transcoder.StatusDeclined] != declined || res.ByStatus[transcoder.StatusApproved] != want-declined {
		t.Errorf("got statuses %v, want %d DECLINED and %d APPROVED", res.ByStatus, declined, want-declined)
	}
}

// TestPipelineEndToEnd: 20 devices x 250 requests through real Mosquitto,
// Kafka, paymentd and bridge; plus a poison message that must be
// dead-lettered and answered REJECTED without stalling anything.
func TestPipelineEndToEnd(t *testing.T) {
	s := newStack(t)
	ctx := withTimeout(t, 4*time.Minute)

	// A device that sends a malformed request first.
	rejected := make(chan transcoder.Reply, 1)
	poison := paho.NewClient(paho.NewClientOptions().AddBroker(s.mqtt).SetClientID("poison-1"))
	if tok := poison.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("poison device connect: %v", tok.Error())
	}
	defer poison.Disconnect(0)
	poison.Subscribe("payment/response/poison-1", 1, func(_ paho.Client, m paho.Message) {
		var r transcoder.Reply
		if json.Unmarshal(m.Payload(), &r) == nil {
			select {
			case rejected <- r:
			default:
			}
		}
	}).Wait()
	poisonBody := []byte(`{"request_id":"p-1","amount_minor":-5,"currency":"EUR"}`)
	poison.Publish("payment/request/poison-1", 1, false, poisonBody).Wait()

	cfg := devicesim.Config{Broker: s.mqtt, Devices: 20, Requests: 250, Outstanding: 4}
	res := <-runDevices(ctx, cfg)
	checkDevices(t, res, cfg)

	select {
	case r := <-rejected:
		if r.Status != transcoder.StatusRejected || r.RequestID != "p-1" {
			t.Errorf("got poison reply %+v, want REJECTED for p-1", r)
		}
	case <-ctx.Done():
		t.Fatal("poison device never got its REJECTED reply")
	}
	checkDLQ(t, ctx, s.kafka, "poison-1", string(transcoder.ReasonBadAmount), poisonBody)

	// Stop the bridge gracefully so the ledger is complete, then check it.
	if err := s.bridge.Stop(30 * time.Second); err != nil {
		t.Fatalf("bridge exit: %v", err)
	}
	checkLedger(t, s.pay.ledger, cfg)
}

// checkDLQ asserts the DLQ topic holds the raw payload with its reason.
func checkDLQ(t *testing.T, ctx context.Context, broker, device, reason string, payload []byte) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics("edgebridge.payment.dlq"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollFetches(fctx)
		cancel()
		var found bool
		fs.EachRecord(func(r *kgo.Record) {
			if string(r.Key) != device {
				return
			}
			for _, h := range r.Headers {
				if h.Key == "edgebridge-dlq-reason" && string(h.Value) == reason && string(r.Value) == string(payload) {
					found = true
				}
			}
		})
		if found {
			return
		}
	}
	t.Fatalf("no DLQ record for %s with reason %s and the raw payload", device, reason)
}

// TestBackendOutage: paymentd is killed mid-run and stays down for several
// seconds; requests pile up in Kafka; when it returns everything drains,
// nothing lost, nothing processed twice.
func TestBackendOutage(t *testing.T) {
	s := newStack(t)
	ctx := withTimeout(t, 4*time.Minute)
	cfg := devicesim.Config{Broker: s.mqtt, Devices: 10, Requests: 200, Outstanding: 4, Counters: new(devicesim.Counters)}
	done := runDevices(ctx, cfg)

	waitFor(t, time.Minute, "first replies", func() bool { return cfg.Counters.Replied.Load() >= 300 })
	s.pay.Kill()
	waitFor(t, 30*time.Second, "/readyz to report the backend gone", func() bool {
		code, body := s.bridge.Readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "no backend stream up")
	})
	producedAtKill, err := s.bridge.Metric("edgebridge_kafka_records_produced_total")
	if err != nil {
		t.Fatal(err)
	}
	ledgerAtKill, err := payment.ReadLedger(s.pay.ledger)
	if err != nil {
		t.Fatal(err)
	}
	// New devices publish while the backend is down: the bridge keeps
	// accepting (PUBACK after the Kafka write) and Kafka holds the backlog.
	wave := devicesim.Config{Broker: s.mqtt, DevicePrefix: "late", Devices: 5, Requests: 20, Outstanding: 20, Counters: new(devicesim.Counters)}
	waveDone := runDevices(ctx, wave)
	waitFor(t, 30*time.Second, "the outage wave to be written to Kafka", func() bool {
		v, err := s.bridge.Metric("edgebridge_kafka_records_produced_total")
		return err == nil && v >= producedAtKill+100
	})
	ledgerDuring, err := payment.ReadLedger(s.pay.ledger)
	if err != nil {
		t.Fatal(err)
	}
	if len(ledgerDuring) != len(ledgerAtKill) {
		t.Fatalf("ledger grew from %d to %d while paymentd was down", len(ledgerAtKill), len(ledgerDuring))
	}
	time.Sleep(2 * time.Second) // the outage lasts a while: the duration is the point here
	s.pay = startPaymentd(t, s.pay.addr, s.pay.ledger)
	waitFor(t, 30*time.Second, "/readyz to recover", s.bridge.Ready)

	checkDevices(t, <-done, cfg)
	checkDevices(t, <-waveDone, wave)
	if err := s.bridge.Stop(30 * time.Second); err != nil {
		t.Fatalf("bridge exit: %v", err)
	}
	checkLedger(t, s.pay.ledger, cfg, wave)
}

// TestGracefulShutdown: SIGTERM mid-run drains and exits 0; after a restart
// the remaining requests complete with no duplicate processing.
func TestGracefulShutdown(t *testing.T) {
	s := newStack(t)
	ctx := withTimeout(t, 4*time.Minute)
	cfg := devicesim.Config{Broker: s.mqtt, Devices: 10, Requests: 300, Outstanding: 4, Counters: new(devicesim.Counters)}
	done := runDevices(ctx, cfg)

	waitFor(t, time.Minute, "first replies", func() bool { return cfg.Counters.Replied.Load() >= 800 })
	if err := s.bridge.Stop(30 * time.Second); err != nil {
		t.Fatalf("first SIGTERM: got %v, want a clean exit 0 after draining", err)
	}
	if !s.bridge.closedCleanly() {
		t.Fatal("bridge did not log a completed drain")
	}
	// Devices keep publishing into the bridge's persistent MQTT session.
	s.bridge = startBridge(t, s.cfgPath, s.bridge.Admin)

	res := <-done
	checkDevices(t, res, cfg)
	if err := s.bridge.Stop(30 * time.Second); err != nil {
		t.Fatalf("bridge exit: %v", err)
	}
	checkLedger(t, s.pay.ledger, cfg)
}

// TestDemo runs the demo command with small counts: it must exit 0.
func TestDemo(t *testing.T) {
	p := start(t, bins.edgebridge, "demo", "-devices", "5", "-requests", "20")
	select {
	case <-p.Done():
	case <-withTimeout(t, 3*time.Minute).Done():
		t.Fatal("demo did not finish")
	}
	if p.Err() != nil {
		t.Fatalf("demo failed: %v\n%s", p.Err(), tail(p.Output(), 3000))
	}
}

func devicesimConfig(broker string, devices, requests int) devicesim.Config {
	return devicesim.Config{Broker: broker, Devices: devices, Requests: requests, Outstanding: 4, Counters: new(devicesim.Counters)}
}
