package integration

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/kit/devicesim"
)

// TestStatusCommand: `edgebridge status` against a running bridge shows the
// backend stream, the window and the lag per partition; -json is the same
// snapshot as JSON.
func TestStatusCommand(t *testing.T) {
	s := newStack(t)
	ctx := withTimeout(t, 2*time.Minute)
	cfg := devicesim.Config{Broker: s.mqtt, Devices: 4, Requests: 25, Outstanding: 2}
	if res, err := devicesim.Run(ctx, cfg, nil); err != nil || res.Replied != 100 {
		t.Fatalf("devices: %v, %d replies, want 100", err, res.Replied)
	}
	admin := "http://" + s.bridge.Admin
	var st bridge.Status
	waitFor(t, 30*time.Second, "/status to show the lag of every partition", func() bool {
		out, err := exec.Command(bins.edgebridge, "status", "-json", "-admin", admin).Output()
		if err != nil || json.Unmarshal(out, &st) != nil {
			return false
		}
		return len(st.Lag) == 8
	})
	switch {
	case !st.Ready || !st.MQTT.Connected || !st.Kafka.Connected:
		t.Errorf("got ready %v mqtt %+v kafka %+v, want all up", st.Ready, st.MQTT, st.Kafka)
	case len(st.Backends) != 1 || !st.Backends[0].Up || st.Backends[0].Addr != s.pay.addr || st.Backends[0].Credits != 128:
		t.Errorf("got backends %+v, want paymentd at %s up with 128 credits", st.Backends, s.pay.addr)
	case st.Window.Capacity != 128:
		t.Errorf("got window %+v, want capacity 128", st.Window)
	case st.Counters.Received != 100 || st.Counters.Replies != 100:
		t.Errorf("got counters %+v, want 100 received and replied", st.Counters)
	}
	out, err := exec.Command(bins.edgebridge, "status", "-admin", admin).CombinedOutput() // not a terminal: one snapshot
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, want := range []string{"READY", "MQTT", "connected", s.pay.addr, "WINDOW", "/ 128 in flight", "LAG", "p7=", "TOTALS", "received 100"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
