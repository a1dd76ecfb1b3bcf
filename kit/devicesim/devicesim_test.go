package devicesim

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgebridge/edgebridge/embedded"
)

func TestAppendRequest(t *testing.T) {
	for _, size := range []int{0, 50, 100, 1024, 4096} {
		b := appendRequest(nil, "r-000042", 1250, "m-dev-0001", size)
		var got map[string]any
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("size %d: %s is not JSON: %v", size, b, err)
		}
		if got["request_id"] != "r-000042" || got["amount_minor"] != 1250.0 || got["currency"] != "EUR" || got["merchant_id"] != "m-dev-0001" {
			t.Errorf("size %d: fields %v", size, got)
		}
		if size > 100 && len(b) != size {
			t.Errorf("size %d: got %d bytes", size, len(b))
		}
		if size <= 90 && got["memo"] != nil {
			t.Errorf("size %d: padded although the request is longer: %s", size, b)
		}
	}
}

// echo answers every request on payment/request/+ with an APPROVED reply,
// through the embedded MQTT broker: the devices' counterpart without a bridge.
func echo(t *testing.T) (broker string) {
	t.Helper()
	m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	broker = "tcp://" + m.Addr()
	c := paho.NewClient(paho.NewClientOptions().AddBroker(broker).SetClientID("echo").SetOrderMatters(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	tok := c.Subscribe("payment/request/+", 1, func(c paho.Client, m paho.Message) {
		dev := strings.TrimPrefix(m.Topic(), "payment/request/")
		var req struct {
			RequestID string `json:"request_id"`
		}
		_ = json.Unmarshal(m.Payload(), &req)
		c.Publish("payment/response/"+dev, 1, false, fmt.Sprintf(`{"request_id":%q,"status":"APPROVED"}`, req.RequestID))
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	return broker
}

// A timed closed-loop run stops sending after Duration, waits for the
// replies still due and counts only those within Duration as InWindow; an
// open-loop run sends Rate x Duration requests on its schedule.
func TestTimedAndOpenLoopRuns(t *testing.T) {
	broker := echo(t)
	res, err := Run(context.Background(), Config{Broker: broker, Devices: 3, Outstanding: 2, Duration: 300 * time.Millisecond, PayloadSize: 512}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent == 0 || res.Replied != res.Sent || res.Lost() != 0 || len(res.Missing) != 0 {
		t.Fatalf("closed loop: sent %d, replied %d, lost %d", res.Sent, res.Replied, res.Lost())
	}
	if res.InWindow == 0 || res.InWindow > res.Replied {
		t.Fatalf("closed loop: %d in the window of %d replies", res.InWindow, res.Replied)
	}

	// 4 devices x 100/s for 500ms: each device sends at k x 40ms from its
	// offset, 12 or 13 times: 50 in all, never more. Fewer only if a loaded
	// machine delays a device's PUBACKs past its last slots.
	res, err = Run(context.Background(), Config{Broker: broker, Devices: 4, Outstanding: 8, Duration: 500 * time.Millisecond, Rate: 100, DevicePrefix: "open"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent < 40 || res.Sent > 51 || res.Replied != res.Sent || res.Lost() != 0 {
		t.Fatalf("open loop at 100/s for 500ms: sent %d (want ~50), replied %d, lost %d", res.Sent, res.Replied, res.Lost())
	}
}
