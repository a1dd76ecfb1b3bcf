package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/disktest"
	"github.com/edgebridge/edgebridge/kit/proc"
)

// stallLength is how long intake is held back in TestIntakeStall.
const stallLength = 60 * time.Second

// TestIntakeStall holds the bridge's Kafka writes back for a minute while
// 20 devices offer 100,000 QoS 1 requests at once (each device publishes
// without waiting for its PUBACKs), in each shape the project ships. Every
// request a device got a PUBACK for is processed exactly once, and every
// request is answered once the stall is over.
//
// With the MQTT broker in the bridge's process, a device's PUBACK means
// "in Kafka": during the stall devices get none, and a device whose
// request waited past the broker's bound is disconnected and sends it
// again. With Mosquitto, Mosquitto PUBACKs at once and holds the requests
// in the bridge's session: its queue limits bound the stall it absorbs.
//
// The bridge and paymentd run without -race: this is a load test.
func TestIntakeStall(t *testing.T) {
	t.Run("brokers in-process", func(t *testing.T) { intakeStall(t, stallInProcess) })
	t.Run("compose: kafka process", func(t *testing.T) { intakeStall(t, stallCompose) })
	t.Run("mosquitto", func(t *testing.T) { intakeStall(t, stallMosquitto) })
}

type stallShape int

const (
	stallInProcess stallShape = iota // run's defaults: both brokers in the bridge; the stall is the disk high-water mark
	stallCompose                     // docker-compose.yml: MQTT in the bridge, `broker kafka` SIGSTOPped
	stallMosquitto                   // Mosquitto, `broker kafka` SIGSTOPped
)

func intakeStall(t *testing.T, shape stallShape) {
	const (
		devices  = 20
		requests = 5000 // per device: 100,000 in all
		floor    = 32 << 20
	)
	payAddr, ledger := freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl")
	pay := startPaymentdBin(t, bins.paymentdNoRace, payAddr, ledger)

	opts := bridgeOpts{backend: pay.addr, kafkaExtra: "  partitions: 4\n"}
	var hold, release func()
	held := "kafka" // what /readyz names during the stall
	devs := devicesim.Config{Devices: devices, Requests: requests, Outstanding: requests, Burst: true,
		Counters: new(devicesim.Counters), Drain: 10 * time.Minute}
	var mq *mosq
	switch shape {
	case stallInProcess:
		disk := disktest.Mount(t, "256m")
		mqttAddr := freeAddr(t)
		opts.mqtt, opts.kafka = "embedded", "embedded"
		opts.mqttExtra = "  embedded_listen: " + mqttAddr + "\n"
		opts.kafkaExtra += fmt.Sprintf("  embedded_listen: 127.0.0.1:0\n  data_dir: %s\n  min_free_bytes: %d\n", disk, floor)
		devs.Broker = "tcp://" + mqttAddr
		held = "intake paused: data disk"
		var ballast string
		hold = func() { ballast = disktest.Fill(t, disk, floor/2) }
		release = func() {
			if err := os.Remove(ballast); err != nil {
				t.Fatal(err)
			}
		}
	case stallCompose, stallMosquitto:
		kafkaAddr := freeAddr(t)
		kafka := startBrokerBin(t, bins.edgebridgeNoRace, "kafka", kafkaAddr, t.TempDir(), "-partitions", "4")
		opts.kafka = kafkaAddr
		if shape == stallMosquitto {
			// 100,000 requests of 1 KiB fill 75 % of a 128 MiB queue
			// limit: the shipped 1 GiB holds about eight times as many.
			mq = startMosquittoConf(t, "max_queued_bytes 134217728\n")
			opts.mqtt = mq.url()
			devs.PayloadSize = 1 << 10
		} else {
			mqttAddr := freeAddr(t)
			opts.mqtt = "embedded"
			opts.mqttExtra = "  embedded_listen: " + mqttAddr + "\n"
			opts.kafkaExtra += "  data_dir: " + t.TempDir() + "\n"
			devs.Broker = "tcp://" + mqttAddr
		}
		hold = func() { signal(t, kafka, syscall.SIGSTOP) }
		release = func() { signal(t, kafka, syscall.SIGCONT) }
	}
	var dropped func() int
	if mq != nil {
		devs.Broker = mq.url()
		dropped = mq.watchDropped(t)
	}
	cfgPath, admin := writeBridgeConfig(t, opts)
	br := startBridgeBin(t, bins.edgebridgeNoRace, cfgPath, admin)

	hold()
	waitFor(t, time.Minute, "/readyz to say intake is held back", func() bool {
		code, body := br.Readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, held)
	})
	ctx := withTimeout(t, 15*time.Minute)
	stallStart := time.Now()
	done := runDevices(ctx, devs)
	// The stall is the scenario, not a wait for a condition.
	time.Sleep(stallLength)
	offered, acked := devs.Counters.Sent.Load(), devs.Counters.Acked.Load()
	code, body := br.Readyz()
	refused, _ := br.Metric("edgebridge_mqtt_intake_refused_total")
	t.Logf("after a %s stall: %d requests offered, %d PUBACKed, %.0f refused by the broker's intake (device disconnected); /readyz %d %q",
		time.Since(stallStart).Round(time.Second), offered, acked, refused, code, clip(body, 200))
	if code == http.StatusOK {
		t.Errorf("/readyz said ready while intake was held back")
	}
	if shape == stallMosquitto {
		// Mosquitto PUBACKs at once and holds the requests for the bridge.
		if acked < devices*requests/2 {
			t.Errorf("Mosquitto PUBACKed %d of %d during the stall, want at least half", acked, devices*requests)
		}
	} else {
		// The PUBACK means "in Kafka": none while nothing can be written.
		if acked != 0 {
			t.Errorf("devices got %d PUBACKs while no write could succeed, want 0", acked)
		}
		if refused == 0 {
			t.Errorf("edgebridge_mqtt_intake_refused_total = 0: no device was held past the broker's bound")
		}
	}

	release()
	thawed := time.Now()
	res := <-done
	drain := time.Since(thawed)
	t.Logf("after the stall: %d of %d PUBACKed, %d answered (%d duplicate replies) %s after it ended: %.0f req/s",
		len(res.Acked), devices*requests, res.Replied, res.Duplicates, drain.Round(time.Second),
		float64(res.Replied)/drain.Seconds())
	if lost := res.Lost(); lost != 0 {
		t.Errorf("%d requests PUBACKed and never answered", lost)
	}
	checkDevices(t, res, devs)
	if len(res.Acked) != devices*requests {
		t.Errorf("got %d requests PUBACKed in the end, want all %d", len(res.Acked), devices*requests)
	}
	if dropped != nil {
		if n := dropped(); n != 0 {
			t.Errorf("Mosquitto dropped %d messages, want 0", n)
		}
	}
	if err := br.Stop(30 * time.Second); err != nil {
		t.Fatalf("bridge exit: %v", err)
	}
	checkLedger(t, ledger, devs)
}

func signal(t *testing.T, p *proc.Process, sig syscall.Signal) {
	t.Helper()
	if err := p.Signal(sig); err != nil {
		t.Fatalf("%s %s: %v", sig, p.Name, err)
	}
	if sig == syscall.SIGSTOP {
		t.Cleanup(func() { _ = p.Signal(syscall.SIGCONT) })
	}
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
