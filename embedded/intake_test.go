package embedded_test

import (
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/mqttin"
)

// intakeBroker is the embedded broker taking payment/request/+ into an
// mqttin.Intake whose requests wait at most wait.
func intakeBroker(t *testing.T, wait time.Duration) (*embedded.MQTT, *mqttin.Intake) {
	t.Helper()
	in := mqttin.NewIntake([]string{"payment/request/+"}, 16)
	m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Intake: in, IntakeWait: wait})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); m.Close() })
	return m, in
}

// connectDevice is a device on a persistent session that reconnects on
// its own; lost counts its lost connections.
func connectDevice(t testing.TB, url, id string, lost *atomic.Int32, h paho.MessageHandler) paho.Client {
	t.Helper()
	return connectDeviceOpts(t, url, id, lost, h, true)
}

func connectDeviceOpts(t testing.TB, url, id string, lost *atomic.Int32, h paho.MessageHandler, reconnect bool) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(false).
		SetAutoReconnect(reconnect).SetConnectRetryInterval(50 * time.Millisecond).SetMaxReconnectInterval(100 * time.Millisecond).
		SetConnectionLostHandler(func(paho.Client, error) {
			if lost != nil {
				lost.Add(1)
			}
		})
	if h != nil {
		o.SetDefaultPublishHandler(h)
	}
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// A device's request is PUBACKed only after the pipeline acknowledged it,
// and is routed to no subscriber: the bridge holds it, not the broker.
func TestIntakePubackWaitsForThePipeline(t *testing.T) {
	m, in := intakeBroker(t, 30*time.Second)
	url := "tcp://" + m.Addr()
	routed := make(chan string, 4)
	spy := connectDevice(t, url, "spy", nil, func(_ paho.Client, msg paho.Message) { routed <- msg.Topic() })
	if tok := spy.SubscribeMultiple(map[string]byte{"payment/request/+": 1, "marker": 1}, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	dev := connectDevice(t, url, "d1", nil, nil)

	tok := dev.Publish("payment/request/d1", 1, true, []byte(`{"request_id":"r-1"}`))
	msg := <-in.Messages()
	if msg.DeviceID != "d1" || string(msg.Payload) != `{"request_id":"r-1"}` {
		t.Fatalf("took %q %q, want d1's request", msg.DeviceID, msg.Payload)
	}
	select {
	case <-tok.Done():
		t.Fatal("the device was PUBACKed before the pipeline acknowledged its request")
	default:
	}
	if !msg.Claim() {
		t.Fatal("Claim: got false")
	}
	msg.Ack()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("no PUBACK after the pipeline's ack: %v", tok.Error())
	}
	// The broker routes one publisher's messages in order: the marker
	// arriving first means the request was never routed (nor retained).
	dev.Publish("marker", 1, false, []byte("m")).Wait()
	if got := <-routed; got != "marker" {
		t.Fatalf("a subscriber got %q, want only the marker", got)
	}
	if m.Retained("payment/request/d1") {
		t.Fatal("the broker retained a taken request")
	}
}

// A request the pipeline does not take in time is not PUBACKed: the broker
// closes the device's connection, the device sends it again after it
// reconnected, and only that copy is written.
func TestIntakeNotTakenInTime(t *testing.T) {
	m, in := intakeBroker(t, 300*time.Millisecond)
	var lost atomic.Int32
	dev := connectDevice(t, "tcp://"+m.Addr(), "d1", &lost, nil)
	tok := dev.Publish("payment/request/d1", 1, false, []byte(`{"request_id":"r-1"}`))

	first := <-in.Messages() // queued, never claimed while the broker waited
	resent := <-in.Messages()
	if first.Claim() {
		t.Fatal("Claim of the request the broker gave up on: got true, want false")
	}
	if !resent.Duplicate || string(resent.Payload) != `{"request_id":"r-1"}` {
		t.Fatalf("second message: dup %v payload %q, want the device's resend", resent.Duplicate, resent.Payload)
	}
	if !resent.Claim() {
		t.Fatal("Claim of the resend: got false")
	}
	resent.Ack()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("the resend was not PUBACKed: %v", tok.Error())
	}
	// paho reports the lost connection from a goroutine of its own, which
	// may run after the reconnect and the resend.
	for deadline := time.Now().Add(10 * time.Second); lost.Load() < 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the device's connection was not closed")
		}
	}
	if n := in.Refused(); n < 1 {
		t.Fatalf("Refused: got %d, want at least 1", n)
	}
}

// Once the intake is closed (the bridge stopping), requests are refused at
// once: no PUBACK, the connection closed.
func TestIntakeClosed(t *testing.T) {
	m, in := intakeBroker(t, time.Minute)
	in.Close()
	var lost atomic.Int32
	// No reconnect: mochi's Close races with a connection it is still
	// setting up (its storage hook stops under it).
	dev := connectDeviceOpts(t, "tcp://"+m.Addr(), "d1", &lost, nil, false)
	start := time.Now()
	dev.Publish("payment/request/d1", 1, false, []byte(`{}`))
	for lost.Load() == 0 {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the connection was not closed within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := in.Refused(); n < 1 {
		t.Fatalf("Refused: got %d, want at least 1", n)
	}
}

// An MQTT 5 device whose request is not taken in time is told why before
// its connection closes: DISCONNECT with reason 0x89 (server busy).
func TestIntakeNotTakenInTimeMQTT5(t *testing.T) {
	m, in := intakeBroker(t, 300*time.Millisecond)
	_, port, _ := net.SplitHostPort(m.Addr())
	pub := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-V", "5", "-q", "1", "-i", "d5",
		"-t", "payment/request/d5", "-m", `{"request_id":"r-1"}`, "-d")
	out, err := pub.CombinedOutput()
	if msg := <-in.Messages(); msg.Claim() {
		t.Fatal("Claim of the request the broker gave up on: got true, want false")
	}
	if err == nil || !strings.Contains(string(out), "Received DISCONNECT (137)") {
		t.Fatalf("mosquitto_pub (MQTT 5): %v\n%s\nwant a DISCONNECT with reason 137 (0x89, server busy) and no PUBACK", err, out)
	}
	if strings.Contains(string(out), "received PUBACK") || strings.Contains(string(out), "Received PUBACK") {
		t.Fatalf("the request was PUBACKed:\n%s", out)
	}
}

// A QoS 2 publish from an MQTT 3.1.1 device (the broker's maximum is QoS 1,
// which 3.1.1 cannot announce) is refused: not taken, not PUBACKed (that
// would be a protocol error for the device), its connection closed.
func TestIntakeRefusesQoS2(t *testing.T) {
	m, in := intakeBroker(t, 10*time.Second)
	_, port, _ := net.SplitHostPort(m.Addr())
	out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-V", "311", "-q", "2", "-i", "d2",
		"-t", "payment/request/d2", "-m", `{"request_id":"r-1"}`, "-d").CombinedOutput()
	if err == nil || strings.Contains(string(out), "received PUBACK") || strings.Contains(string(out), "received PUBREC") {
		t.Fatalf("mosquitto_pub -q 2: %v\n%s\nwant the connection closed, unacknowledged", err, out)
	}
	// A QoS 1 request after it is the first the intake gets.
	dev := connectDevice(t, "tcp://"+m.Addr(), "d1", nil, nil)
	tok := dev.Publish("payment/request/d1", 1, false, []byte(`{"request_id":"r-2"}`))
	msg := <-in.Messages()
	if msg.DeviceID != "d1" || !msg.Claim() {
		t.Fatalf("the intake took %s's request first, want d1's (the QoS 2 one was taken)", msg.DeviceID)
	}
	msg.Ack()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("QoS 1 request not PUBACKed: %v", tok.Error())
	}
}

// The intake publishes the bridge's replies inside the broker: a device
// subscribed gets them QoS 1, an offline device on a persistent session
// gets the one sent meanwhile when it is back, replies go on after the
// intake stopped taking requests (a draining bridge), and once the broker
// closed a reply is an error, never a silent drop.
func TestIntakeReplies(t *testing.T) {
	m, in := intakeBroker(t, 30*time.Second)
	if !in.CanReply() {
		t.Fatal("the broker did not give the intake its in-process publish")
	}
	url := "tcp://" + m.Addr()
	got := make(chan string, 4)
	dev := replyDevice(t, url, "d1", got)
	if err := in.Reply("payment/response/d1", []byte("r1")); err != nil {
		t.Fatal(err)
	}
	if r := awaitReply(t, got); r != "payment/response/d1 r1" {
		t.Fatalf("device got %q", r)
	}

	dev.Disconnect(100)
	if err := in.Reply("payment/response/d1", []byte("r2")); err != nil {
		t.Fatal(err)
	}
	// r1's PUBACK may not have reached the broker before the disconnect:
	// then it is held too, and sent again first.
	if n := m.Inflight("d1"); n < 1 {
		t.Fatalf("the offline device's session holds %d messages, want the reply", n)
	}
	replyDevice(t, url, "d1", got)
	for r := awaitReply(t, got); r != "payment/response/d1 r2"; r = awaitReply(t, got) {
		if r != "payment/response/d1 r1" {
			t.Fatalf("device got %q after reconnecting", r)
		}
	}

	in.Close() // the bridge stopped taking requests: its replies still go out
	if err := in.Reply("payment/response/d1", []byte("r3")); err != nil {
		t.Fatalf("a reply after the intake closed: %v", err)
	}
	if r := awaitReply(t, got); r != "payment/response/d1 r3" {
		t.Fatalf("device got %q", r)
	}
	m.Close()
	if err := in.Reply("payment/response/d1", []byte("r4")); err == nil {
		t.Fatal("a reply after the broker closed was taken")
	}
}

// A client may not take the inline client's id: mochi would hand it the
// inline client's place, and replies would stop.
func TestIntakeRefusesInlineClientID(t *testing.T) {
	m, in := intakeBroker(t, 30*time.Second)
	url := "tcp://" + m.Addr()
	o := paho.NewClientOptions().AddBroker(url).SetClientID("inline").SetAutoReconnect(false).SetConnectRetry(false)
	c := paho.NewClient(o)
	if tok := c.Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		c.Disconnect(0)
		t.Fatal("a client connected as \"inline\"")
	}
	got := make(chan string, 1)
	replyDevice(t, url, "d2", got)
	if err := in.Reply("payment/response/d2", []byte("r")); err != nil {
		t.Fatal(err)
	}
	if r := awaitReply(t, got); r != "payment/response/d2 r" {
		t.Fatalf("device got %q", r)
	}
}

// replyDevice connects device id on a persistent session, subscribed QoS
// 1 to its reply topic; got receives each message as "topic payload".
func replyDevice(t *testing.T, url, id string, got chan<- string) paho.Client {
	t.Helper()
	dev := connectDeviceOpts(t, url, id, nil, func(_ paho.Client, msg paho.Message) { got <- msg.Topic() + " " + string(msg.Payload()) }, false)
	if tok := dev.Subscribe("payment/response/"+id, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return dev
}

func awaitReply(t *testing.T, got <-chan string) string {
	t.Helper()
	return await.Receive(t, got, 10*time.Second, "reply")
}
