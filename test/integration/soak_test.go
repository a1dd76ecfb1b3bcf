package integration

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/proc"
	"github.com/edgebridge/edgebridge/payment"
)

// TestSoak is the days-offline scenario in the compose shape (the bridge
// hosting MQTT, `broker kafka` its own process): the backend is
// unreachable while devices send their requests; the bridge is killed
// (SIGKILL) and started again at 40 % of them, the Kafka broker at 70 %;
// once every request was offered the backend starts and everything
// drains. Every request a device was PUBACKed for is processed exactly
// once and answered. It samples both processes' RSS and the broker's disk
// every second.
//
// CI runs 20,000 requests. `make soak` runs 1,000,000 (about 25 minutes
// here: EDGEBRIDGE_SOAK_REQUESTS) and writes its report and plot
// (EDGEBRIDGE_SOAK_REPORT, EDGEBRIDGE_SOAK_PLOT) for docs/RELIABILITY.md.
func TestSoak(t *testing.T) {
	total, rate := 20000, 1000.0
	if v := os.Getenv("EDGEBRIDGE_SOAK_REQUESTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			t.Fatalf("EDGEBRIDGE_SOAK_REQUESTS=%q: want a number of at least 1000", v)
		}
		total, rate = n, 2000
	}
	const devices = 50
	perDevice := total / devices
	payAddr, ledger := freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl")
	kafkaAddr, kafkaDir := freeAddr(t), t.TempDir()
	startKafka := func() *proc.Process {
		return startBrokerBin(t, bins.edgebridgeNoRace, "kafka", kafkaAddr, kafkaDir, "-partitions", "8")
	}
	kafka := startKafka()
	mqttAddr, dataDir := freeAddr(t), t.TempDir()
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: "embedded", kafka: kafkaAddr, backend: payAddr,
		mqttExtra: "  embedded_listen: " + mqttAddr + "\n", kafkaExtra: "  data_dir: " + dataDir + "\n"})
	// Not ready while no backend is up: wait for the broker it hosts.
	startBridge := func() *bridgeProc {
		p := &bridgeProc{&proc.Bridge{Process: start(t, bins.edgebridgeNoRace, "run", "-config", cfgPath), Admin: admin}}
		waitFor(t, time.Minute, "the bridge's MQTT broker", func() bool { return dialable(mqttAddr) })
		return p
	}
	br := startBridge()

	var mu sync.Mutex // guards br and kafka for the sampler
	s := &soakSamples{start: time.Now()}
	stopSampling := make(chan struct{})
	var sampling sync.WaitGroup
	sampling.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			mu.Lock()
			s.add(statusKiB(br.PID(), "VmRSS"), statusKiB(kafka.PID(), "VmRSS"), dirBytes(kafkaDir))
			mu.Unlock()
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	})
	stopSamples := sync.OnceFunc(func() { close(stopSampling); sampling.Wait() })
	defer stopSamples()

	ctx := withTimeout(t, 2*time.Hour)
	devs := devicesim.Config{Broker: "tcp://" + mqttAddr, Devices: devices, Requests: perDevice, Outstanding: perDevice,
		Rate: rate, Counters: new(devicesim.Counters), Drain: time.Hour}
	done := runDevices(ctx, devs)
	offered := func() int64 { return devs.Counters.Sent.Load() }
	want := int64(devices * perDevice)

	// kill SIGKILLs a process once a share of the requests was offered
	// and starts it again at once.
	kill := func(share int64, name string, restart func()) {
		waitFor(t, time.Hour, fmt.Sprintf("%d %% of the requests", share), func() bool { return offered() >= want*share/100 })
		mu.Lock()
		restart()
		mu.Unlock()
		t.Logf("%s killed and restarted at %d offered", name, offered())
	}
	kill(40, "bridge", func() { br.Kill(); br = startBridge() })
	kill(70, "kafka broker", func() { kafka.Kill(); kafka = startKafka() })
	waitFor(t, time.Hour, "every request offered", func() bool { return offered() >= want })
	offeredAt := time.Since(s.start)

	backendAt := time.Now()
	pay := startPaymentdBin(t, bins.paymentdNoRace, payAddr, ledger)
	res := <-done
	drain := time.Since(backendAt)
	stopSamples()
	entries, err := payment.ReadLedger(ledger)
	if err != nil {
		t.Fatal(err)
	}
	audit := devicesim.AuditLedger(entries)
	rep := soakReport{Requests: int(want), Offered: res.Sent, PUBACKed: len(res.Acked), ProcessedOnce: len(audit.Processed),
		Lost: res.Lost(), Twice: audit.Twice, OfferedSeconds: offeredAt.Seconds(), DrainSeconds: drain.Seconds(),
		DrainRate: float64(res.Replied) / drain.Seconds()}
	rep.PeakBridgeRSSMiB, rep.PeakKafkaRSSMiB, rep.PeakDiskMiB = s.peaks()
	t.Logf("soak: %s", rep)
	if rep.Lost != 0 || rep.Twice != 0 || rep.ProcessedOnce != int(want) || rep.PUBACKed != int(want) {
		t.Errorf("soak: want every request PUBACKed and processed exactly once, none lost: %s", rep)
	}
	checkDevices(t, res, devs)
	if err := pay.Stop(20 * time.Second); err != nil {
		t.Errorf("paymentd exit: %v", err)
	}
	if path := os.Getenv("EDGEBRIDGE_SOAK_REPORT"); path != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Error(err)
		}
	}
	if path := os.Getenv("EDGEBRIDGE_SOAK_PLOT"); path != "" {
		svg := s.svg(offeredAt, drain)
		if err := os.WriteFile(path, []byte(svg), 0o644); err != nil {
			t.Error(err)
		}
	}
}

type soakReport struct {
	Requests         int     `json:"requests"`
	Offered          int     `json:"offered"`
	PUBACKed         int     `json:"pubacked"`
	ProcessedOnce    int     `json:"processed_once"`
	Lost             int     `json:"lost"`
	Twice            int     `json:"processed_twice"`
	OfferedSeconds   float64 `json:"offered_seconds"`
	DrainSeconds     float64 `json:"drain_seconds"`
	DrainRate        float64 `json:"drain_rate"`
	PeakBridgeRSSMiB float64 `json:"peak_bridge_rss_mib"`
	PeakKafkaRSSMiB  float64 `json:"peak_kafka_rss_mib"`
	PeakDiskMiB      float64 `json:"peak_disk_mib"`
}

func (r soakReport) String() string {
	return fmt.Sprintf("offered %d, PUBACKed %d, processed once %d, lost %d, twice %d; offered in %.0f s; drained in %.0f s (%.0f req/s); peak RSS bridge %.0f MiB, kafka broker %.0f MiB; peak disk %.0f MiB",
		r.Offered, r.PUBACKed, r.ProcessedOnce, r.Lost, r.Twice, r.OfferedSeconds, r.DrainSeconds, r.DrainRate,
		r.PeakBridgeRSSMiB, r.PeakKafkaRSSMiB, r.PeakDiskMiB)
}

// soakSamples are the soak's per-second samples.
type soakSamples struct {
	start               time.Time
	at                  []float64 // seconds since start
	bridge, kafka, disk []float64 // MiB
}

func (s *soakSamples) add(bridgeKiB, kafkaKiB, diskBytes int64) {
	s.at = append(s.at, time.Since(s.start).Seconds())
	s.bridge = append(s.bridge, float64(bridgeKiB)/1024)
	s.kafka = append(s.kafka, float64(kafkaKiB)/1024)
	s.disk = append(s.disk, float64(diskBytes)/(1<<20))
}

func (s *soakSamples) peaks() (bridge, kafka, disk float64) {
	for i := range s.at {
		bridge, kafka, disk = max(bridge, s.bridge[i]), max(kafka, s.kafka[i]), max(disk, s.disk[i])
	}
	return bridge, kafka, disk
}

// svg plots RSS and disk over time, with the end of the offering and the
// drain marked.
func (s *soakSamples) svg(offered, drain time.Duration) string {
	const w, h, pad = 900.0, 360.0, 50.0
	tMax, yMax := 1.0, 1.0
	for i := range s.at {
		tMax = max(tMax, s.at[i])
		yMax = max(yMax, s.bridge[i], s.kafka[i], s.disk[i])
	}
	x := func(t float64) float64 { return pad + t/tMax*(w-2*pad) }
	y := func(v float64) float64 { return h - pad - v/yMax*(h-2*pad) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/><line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n",
		pad, h-pad, w-pad, h-pad, pad, pad, pad, h-pad)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%.0f MiB</text><text x="%.0f" y="%.0f">%.0f s</text><text x="%.0f" y="%.0f">0</text>`+"\n",
		4.0, pad, yMax, w-pad-30, h-pad+16, tMax, pad-10, h-pad+16)
	for _, m := range []struct {
		at    float64
		label string
	}{{offered.Seconds(), "all offered, backend starts"}, {offered.Seconds() + drain.Seconds(), "drained"}} {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="gray" stroke-dasharray="4"/><text x="%.1f" y="%.0f" fill="gray">%s</text>`+"\n",
			x(m.at), pad, x(m.at), h-pad, x(m.at)+3, pad+12, m.label)
	}
	for i, series := range []struct {
		name, color string
		v           []float64
	}{{"bridge RSS", "#1f77b4", s.bridge}, {"kafka broker RSS", "#d62728", s.kafka}, {"kafka disk", "#2ca02c", s.disk}} {
		var pts []string
		for j := range s.at {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.at[j]), y(series.v[j])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", series.color, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="%s">%s</text>`+"\n", w-pad-150, pad+16*float64(i+2), series.color, series.name)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// statusKiB is a field of a process's /proc status in KiB, such as VmRSS
// (its resident set) or VmHWM (the most it has been); 0 once it is gone.
func statusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// dirBytes is the size of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
