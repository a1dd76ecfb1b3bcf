package mqttin_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/internal/syncbuf"
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
	c, stop := start(t, mqttin.Config{Broker: url, ClientID: "bridge-test", Subscribe: []string{"req/+"}})
	waitUntil(t, c.Subscribed)
	return c, stop
}

// start runs a client until stop is called or the test ends.
func start(t *testing.T, cfg mqttin.Config, opts ...mqttin.Option) (*mqttin.Client, func()) {
	t.Helper()
	c, err := mqttin.New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(stop)
	return c, stop
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	await.True(t, 10*time.Second, "the condition", cond)
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
	// A topic no broker accepts is refused before anything is sent: the
	// bridge stays connected.
	if err := c.Publish(context.Background(), "resp/"+strings.Repeat("x", 65535), []byte("x")); !errors.Is(err, mqttin.ErrInvalidTopic) {
		t.Fatalf("got %v, want ErrInvalidTopic", err)
	}
	if !c.Subscribed() {
		t.Fatal("refusing a topic disconnected the client")
	}
}

func TestValidTopic(t *testing.T) {
	tests := []struct {
		topic string
		ok    bool
	}{
		{"payment/response/dev-1", true},
		{"payment/response/é🙂", true},
		{strings.Repeat("a", 65535), true},
		{strings.Repeat("a", 65536), false},
		{"", false},
		{"payment/response/+", false},
		{"payment/#", false},
		{"bad/\xff", false},
		{"bad/\xc3", false}, // a character cut in half
		{"nul/\x00", false},
		{"ctl/\x1f", false},
		{"del/\x7f", false},
		{"c1/\u0085", false},
		{"nonchar/\ufffe", false},
		{"nonchar/\ufdd0", false},
		{"nonchar/\U0001ffff", false},
	}
	for _, tc := range tests {
		err := mqttin.ValidTopic(tc.topic)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, mqttin.ErrInvalidTopic)) {
			t.Errorf("ValidTopic(%.40q) = %v, want ok %v", tc.topic, err, tc.ok)
		}
	}
}

// A retained message is delivered flagged on a new subscription; after
// ClearRetained a new subscription gets nothing.
func TestRetainedFlagAndClear(t *testing.T) {
	m := broker(t, t.TempDir())
	url := "tcp://" + m.Addr()
	dev := publisher(t, url)
	// mochi PUBACKs before it stores and forwards a message: a probe
	// subscribed beforehand sees when that is done (it stores first).
	live := make(chan struct{}, 1)
	probe := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("probe"))
	if tok := probe.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer probe.Disconnect(0)
	probe.Subscribe("req/dev-1", 0, func(paho.Client, paho.Message) { live <- struct{}{} }).Wait()
	dev.Publish("req/dev-1", 1, true, "old").Wait()
	select {
	case <-live:
	case <-time.After(10 * time.Second):
		t.Fatal("the retained publish was not forwarded")
	}
	c, stop := client(t, url)
	var msg mqttin.Message
	select {
	case msg = <-c.Messages():
	case <-time.After(10 * time.Second):
		t.Fatal("retained message not delivered")
	}
	if !msg.Retained || string(msg.Payload) != "old" {
		t.Fatalf("got %q retained %v, want the retained message flagged", msg.Payload, msg.Retained)
	}
	msg.Ack()
	if err := c.ClearRetained(context.Background(), "req/dev-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case echo := <-c.Messages(): // the clear itself, delivered live
		if echo.Retained || len(echo.Payload) != 0 {
			t.Fatalf("got %q retained %v, want the empty live clear", echo.Payload, echo.Retained)
		}
		echo.Ack()
	case <-time.After(10 * time.Second):
		t.Fatal("the clear was not delivered")
	}
	stop()

	other, _ := start(t, mqttin.Config{Broker: url, ClientID: "another", Subscribe: []string{"req/+"}})
	waitUntil(t, other.Subscribed)
	dev.Publish("req/dev-1", 1, false, "marker").Wait()
	select {
	case got := <-other.Messages():
		if string(got.Payload) != "marker" {
			t.Fatalf("a new subscription got %q retained %v, want no retained message before the marker", got.Payload, got.Retained)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("marker not delivered")
	}
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct{ syncbuf.Buffer }

func (l *logBuffer) count(s string) int { return strings.Count(l.String(), s) }

// countConn counts the lines with msg about connection conn (intake or replies).
func (l *logBuffer) countConn(msg, conn string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, msg) && strings.Contains(line, "conn="+conn) {
			n++
		}
	}
	return n
}

// A broker that cannot be reached is logged with the cause once, not once
// per retry; connecting and losing the connection are logged once each;
// the broker URL's password never appears.
func TestConnectionStateLoggedOnce(t *testing.T) {
	// A port where every connection is closed at once: the MQTT handshake fails.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	var attempts atomic.Int64
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			attempts.Add(1)
			c.Close()
		}
	}()
	logs := &logBuffer{}
	c, stop := start(t, mqttin.Config{Broker: "tcp://bridge:s3cret@" + addr, ClientID: "bridge-log", Subscribe: []string{"req/+"},
		ConnectRetryInterval: 10 * time.Millisecond, MaxReconnectInterval: 50 * time.Millisecond},
		mqttin.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	defer stop()

	waitUntil(t, func() bool { return attempts.Load() >= 5 })
	// The replies connection comes up first; intake waits for it.
	if n := logs.countConn("mqttin: cannot connect", "replies"); n != 1 {
		t.Fatalf("after %d failed attempts: %d 'cannot connect' lines, want 1:\n%s", attempts.Load(), n, logs)
	}
	if !strings.Contains(logs.String(), "err=") {
		t.Fatalf("the failure is logged without its cause:\n%s", logs)
	}

	ln.Close()
	<-accepting
	m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: addr, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, c.Subscribed)
	m.Close()
	for _, conn := range []string{"intake", "replies"} {
		waitUntil(t, func() bool { return logs.countConn("mqttin: connection lost", conn) == 1 })
		if n := logs.countConn("mqttin: connected", conn); n != 1 {
			t.Errorf("got %d 'connected' lines for the %s connection, want 1:\n%s", n, conn, logs)
		}
	}
	if strings.Contains(logs.String(), "s3cret") {
		t.Errorf("the broker password is in the logs:\n%s", logs)
	}
}

// A broker that refuses the subscription (SUBACK 0x80) leaves the client
// connected but not subscribed, logging the refusal and retrying on the
// same connection until the broker grants it.
func TestSubscribeRefusedIsRetried(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	// A broker that refuses the first two SUBSCRIBEs and grants the third.
	var connects, subscribes atomic.Int32
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			connects.Add(1)
			go func() {
				defer conn.Close()
				for {
					pk, err := packets.ReadPacket(conn)
					if err != nil {
						return
					}
					var reply packets.ControlPacket
					switch pk := pk.(type) {
					case *packets.ConnectPacket:
						reply = packets.NewControlPacket(packets.Connack)
					case *packets.SubscribePacket:
						ack := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
						ack.MessageID, ack.ReturnCodes = pk.MessageID, []byte{0x80}
						if subscribes.Add(1) > 2 {
							ack.ReturnCodes = []byte{1}
						}
						reply = ack
					case *packets.PingreqPacket:
						reply = packets.NewControlPacket(packets.Pingresp)
					case *packets.DisconnectPacket:
						return
					}
					if reply != nil && reply.Write(conn) != nil {
						return
					}
				}
			}()
		}
	}()

	var logs logBuffer
	c, _ := start(t, mqttin.Config{Broker: "tcp://" + l.Addr().String(), ClientID: "bridge-refused", Subscribe: []string{"req/+"}},
		mqttin.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	waitUntil(t, func() bool { return logs.count("subscribe failed; retrying") >= 1 })
	if c.Subscribed() || !strings.Contains(logs.String(), "SUBACK code 0x80") {
		t.Fatalf("subscribed %v with a refused subscription; log:\n%s", c.Subscribed(), logs.String())
	}
	waitUntil(t, c.Subscribed)
	if n, s := connects.Load(), subscribes.Load(); n != 2 || s != 3 {
		t.Errorf("%d connections and %d SUBSCRIBEs, want 2 (intake and replies) and 3 (retried on the same connection):\n%s", n, s, logs.String())
	}
}

func TestFilterMatches(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"device/+/command", "device/term-1/command", true},
		{"device/+/command", "device/term-1/command/x", false},
		{"device/+/command", "device/command", false},
		{"payment/response/+", "payment/response/t", true},
		{"payment/#", "payment/request/t", true},
		{"payment/#", "payment", true}, // # also matches the parent level (MQTT 4.7.1.2)
		{"#", "anything/at/all", true},
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"+/+", "a/b", true},
	} {
		if got := mqttin.FilterMatches(c.filter, c.topic); got != c.want {
			t.Errorf("FilterMatches(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

// While intake holds back (its queue full: Kafka is not taking writes),
// replies still go out. With one connection they could not: paho handles a
// connection's packets in order, so a reply's PUBACK waited behind the
// requests intake held — and the backlog drains only as replies go out.
func TestPublishWhileIntakeHoldsBack(t *testing.T) {
	m := broker(t, t.TempDir())
	url := "tcp://" + m.Addr()
	c, _ := start(t, mqttin.Config{Broker: url, ClientID: "bridge-held", Subscribe: []string{"req/+"}, QueueSize: 1})
	waitUntil(t, c.Subscribed)
	dev := publisher(t, url)
	const held = 50 // more than paho buffers between its reader and the handler
	for i := range held {
		if tok := dev.Publish("req/dev-1", 1, false, fmt.Sprintf("r-%d", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("device publish %d: %v", i, tok.Error())
		}
	}
	// Nothing reads Messages(): one message in the queue, the next held in
	// the receive handler, the rest in paho; wait until the broker sent them.
	waitUntil(t, func() bool { return len(c.Messages()) == 1 && m.Inflight("bridge-held") == held })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Publish(ctx, "resp/dev-1", []byte("approved")); err != nil {
		t.Fatalf("reply while intake holds back: %v", err)
	}
	for range held { // drain: the handler gets the rest
		select {
		case msg := <-c.Messages():
			msg.Ack()
		case <-ctx.Done():
			t.Fatal("intake did not resume")
		}
	}
}
