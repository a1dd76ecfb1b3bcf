package mqttin_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/mqttin"
)

func broker(t *testing.T, dir string) *embedded.MQTT {
	t.Helper()
	m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func client(t *testing.T, url string) (*mqttin.Client, func()) {
	t.Helper()
	c, err := mqttin.New(mqttin.Config{Broker: url, ClientID: "bridge-test", Subscribe: []string{"req/+"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitUntil(t, c.Subscribed)
	return c, func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func publisher(t *testing.T, url string) paho.Client {
	t.Helper()
	p := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("device"))
	if tok := p.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	t.Cleanup(func() { p.Disconnect(0) })
	return p
}

func recv(t *testing.T, c *mqttin.Client) mqttin.Message {
	t.Helper()
	select {
	case m := <-c.Messages():
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
		return mqttin.Message{}
	}
}

// Messages arrive in publish order with the device id from the topic, and a
// message that was never ACKed is redelivered to the same (persistent)
// session after the client reconnects.
func TestOrderAndRedeliveryOfUnacked(t *testing.T) {
	m := broker(t, t.TempDir())
	url := "tcp://" + m.Addr()
	c, stop := client(t, url)
	pub := publisher(t, url)
	for i := range 20 {
		pub.Publish("req/dev-7", 1, false, fmt.Sprintf("p%02d", i)).Wait()
	}
	for i := range 20 {
		got := recv(t, c)
		if string(got.Payload) != fmt.Sprintf("p%02d", i) || got.DeviceID != "dev-7" {
			t.Fatalf("got %q from %q, want p%02d from dev-7", got.Payload, got.DeviceID, i)
		}
		if i < 15 {
			got.Ack() // the last five are never acknowledged
		}
	}
	// PUBACKs are sent asynchronously; wait until the broker has them
	// (paho may drop acks still queued at disconnect: they would only
	// cause a redelivery, which backends deduplicate).
	waitUntil(t, func() bool { return m.Inflight("bridge-test") == 5 })
	stop()

	c, stop = client(t, url)
	defer stop()
	// The embedded broker resends a resumed session's in-flight messages in
	// no particular order (Mosquitto keeps publish order); all must come.
	redelivered := map[string]bool{}
	for range 5 {
		got := recv(t, c)
		if !got.Duplicate {
			t.Errorf("redelivery of %q not flagged duplicate", got.Payload)
		}
		redelivered[string(got.Payload)] = true
		got.Ack()
	}
	for i := 15; i < 20; i++ {
		if !redelivered[fmt.Sprintf("p%02d", i)] {
			t.Errorf("un-acknowledged p%02d was not redelivered (got %v)", i, redelivered)
		}
	}
	select {
	case extra := <-c.Messages():
		t.Fatalf("acknowledged message %q was delivered again", extra.Payload)
	case <-time.After(300 * time.Millisecond):
	}
}

func TestPublishAndReplyTopic(t *testing.T) {
	m := broker(t, t.TempDir())
	url := "tcp://" + m.Addr()
	c, stop := client(t, url)
	defer stop()
	got := make(chan string, 1)
	sub := publisher(t, url)
	sub.Subscribe("resp/dev-1", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }).Wait()
	topic := mqttin.ReplyTopic("resp/{device_id}", "dev-1")
	if err := c.Publish(context.Background(), topic, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "hello" {
			t.Fatalf("got %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reply not received")
	}
	if mqttin.DeviceID("a/b/c") != "c" {
		t.Fatal("DeviceID must be the last topic level")
	}
}
