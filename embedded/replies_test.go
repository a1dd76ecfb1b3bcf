package embedded_test

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgebridge/edgebridge/embedded"
)

// TestQueuedRepliesSurviveCollidingIDs: replies queued for a device that is
// offline wait for it across broker restarts, and reach it although the
// device, on reconnecting, subscribes and publishes with packet ids the
// broker is using for those replies (mochi-mqtt/server#545: its publishes
// deleted the replies, its SUBSCRIBE got 0x91). The device reads them with
// paho, and with mosquitto_sub -c.
func TestQueuedRepliesSurviveCollidingIDs(t *testing.T) {
	t.Run("paho", func(t *testing.T) { queuedReplies(t, false) })
	t.Run("mosquitto_sub", func(t *testing.T) { queuedReplies(t, true) })
}

func queuedReplies(t *testing.T, mosquittoSub bool) {
	const n = 40
	const topic = "payment/response/d1"
	dir := t.TempDir()
	listen := func(addr string) *embedded.MQTT {
		m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: addr, DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := listen("127.0.0.1:0")
	addr := m.Addr()
	url := "tcp://" + addr
	defer func() { m.Close() }()
	restart := func() {
		m.Close()
		m = listen(addr)
	}

	// The device subscribes on a persistent session and goes offline.
	dev := connectDeviceOpts(t, url, "d1", nil, nil, false)
	if tok := dev.Subscribe(topic, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	dev.Disconnect(100)
	// Replies queue for it (ids 1..n), and survive a restart.
	bridge := connectDeviceOpts(t, url, "bridge-replies", nil, nil, false)
	for i := range n {
		if tok := bridge.Publish(topic, 1, false, fmt.Sprintf("reply-%02d", i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish reply %d: %v", i, tok.Error())
		}
	}
	bridge.Disconnect(100)
	restart()

	// The device comes back, holds the resent replies un-acknowledged,
	// subscribes again and publishes n requests: its packet ids 1..n+1
	// collide with the replies'.
	release := make(chan struct{})
	o := paho.NewClientOptions().AddBroker(url).SetClientID("d1").SetCleanSession(false).SetAutoReconnect(false).
		SetOrderMatters(false).SetDefaultPublishHandler(func(paho.Client, paho.Message) {
		<-release // the PUBACK goes out after the handler returns
	})
	dev = paho.NewClient(o)
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("reconnect: %v", tok.Error())
	}
	sub := dev.Subscribe(topic, 1, nil)
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		t.Fatalf("subscribe again: %v", sub.Error())
	}
	for f, code := range sub.(*paho.SubscribeToken).Result() {
		if code >= 0x80 {
			t.Fatalf("SUBACK for %s: %#x, want granted (QoS 1)", f, code)
		}
	}
	for i := range n {
		if tok := dev.Publish("payment/request/d1", 1, false, "{}"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish request %d: %v", i, tok.Error())
		}
	}
	// Gone before acknowledging any reply (paho may still send a PUBACK
	// after Disconnect returns: the handlers are released only at the end).
	dev.Disconnect(0)
	defer close(release)
	restart()

	got := map[string]bool{}
	if mosquittoSub {
		bin, err := exec.LookPath("mosquitto_sub")
		if err != nil {
			t.Fatalf("mosquitto_sub is not installed (scripts/test.sh installs mosquitto-clients): %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, port, _ := strings.Cut(addr, ":")
		out, err := exec.CommandContext(ctx, bin, "-h", "127.0.0.1", "-p", port, "-i", "d1", "-c", "-q", "1",
			"-t", topic, "-C", fmt.Sprint(n), "-W", "20").CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_sub: %v\n%s", err, out)
		}
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			got[sc.Text()] = true
		}
	} else {
		var mu sync.Mutex
		all := make(chan struct{})
		dev = connectDeviceOpts(t, url, "d1", nil, func(_ paho.Client, msg paho.Message) {
			mu.Lock()
			defer mu.Unlock()
			got[string(msg.Payload())] = true
			if len(got) == n {
				close(all)
			}
		}, false)
		select {
		case <-all:
		case <-time.After(20 * time.Second):
		}
		mu.Lock()
		defer mu.Unlock()
	}
	for i := range n {
		if !got[fmt.Sprintf("reply-%02d", i)] {
			t.Errorf("reply-%02d never arrived (got %d of %d)", i, len(got), n)
		}
	}
}
