package embedded_test

import (
	"context"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgebridge/edgebridge/embedded"
)

// Records acknowledged by the broker are there after a restart on the same
// data dir, with or without an fsync per batch (without, Close syncs).
func TestKafkaDataSurvivesRestart(t *testing.T) {
	for _, noFsync := range []bool{false, true} {
		t.Run(map[bool]string{false: "fsync", true: "no-fsync"}[noFsync], func(t *testing.T) { kafkaRestart(t, noFsync) })
	}
}

func kafkaRestart(t *testing.T, noFsync bool) {
	dir := t.TempDir()
	k, err := embedded.ListenKafka(embedded.KafkaConfig{Listen: "127.0.0.1:0", DataDir: dir, Partitions: 1, NoFsync: noFsync})
	if err != nil {
		t.Fatal(err)
	}
	addr := k.Addr()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.AllowAutoTopicCreation(), kgo.RequiredAcks(kgo.AllISRAcks()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, v := range []string{"a", "b", "c"} {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	cl.Close()
	k.Close()
	k.Close() // idempotent

	k, err = embedded.ListenKafka(embedded.KafkaConfig{Listen: addr, DataDir: dir, Partitions: 1, NoFsync: noFsync})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	cl, err = kgo.NewClient(kgo.SeedBrokers(k.Addr()), kgo.ConsumeTopics("t"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var got []string
	for len(got) < 3 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	if len(got) != 3 || got[0] != "a" || got[2] != "c" {
		t.Fatalf("got %v after restart, want [a b c]", got)
	}
}

// A persistent session's queued QoS 1 message survives a broker restart.
func TestMQTTSessionSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	url := "tcp://" + m.Addr()
	connect := func(id string, clean bool, h paho.MessageHandler) paho.Client {
		o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean)
		if h != nil {
			o.SetDefaultPublishHandler(h)
		}
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		return c
	}
	sub := connect("sub", false, nil)
	sub.Subscribe("q/+", 1, nil).Wait()
	sub.Disconnect(50) // session and subscription stay with the broker
	pub := connect("pub", true, nil)
	pub.Publish("q/1", 1, false, "queued").Wait()
	pub.Disconnect(50)
	m.Close()

	m, err = embedded.ListenMQTT(embedded.MQTTConfig{Listen: m.Addr(), DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := make(chan string, 1)
	sub = connect("sub", false, func(_ paho.Client, msg paho.Message) { got <- string(msg.Payload()) })
	defer sub.Disconnect(0)
	select {
	case s := <-got:
		if s != "queued" {
			t.Fatalf("got %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("queued message lost across the broker restart")
	}
}

// A client that sends a packet over MaxPacketSize is disconnected; the
// broker keeps serving others, and a packet within the cap goes through.
func TestMQTTMaxPacketSize(t *testing.T) {
	m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := make(chan int, 4)
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + m.Addr()).SetClientID("sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer sub.Disconnect(0)
	sub.Subscribe("big/+", 1, func(_ paho.Client, msg paho.Message) { got <- len(msg.Payload()) }).Wait()

	lost := make(chan struct{})
	pub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + m.Addr()).SetClientID("pub").SetAutoReconnect(false).
		SetConnectionLostHandler(func(paho.Client, error) { close(lost) }))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(0)
	pub.Publish("big/ok", 1, false, make([]byte, 2<<20)).WaitTimeout(10 * time.Second)
	select {
	case n := <-got:
		if n != 2<<20 {
			t.Fatalf("got %d bytes, want %d", n, 2<<20)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a 2 MiB message within the cap was not delivered")
	}
	pub.Publish("big/over", 1, false, make([]byte, embedded.MaxPacketSize))
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("a client sending a packet over the cap stayed connected")
	}
	select {
	case n := <-got:
		t.Fatalf("a %d-byte message over the cap was delivered", n)
	default:
	}
}
