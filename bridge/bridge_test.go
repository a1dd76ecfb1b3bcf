package bridge_test

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/kit/rig"
	"github.com/edgebridge/edgebridge/transcoder"
)

// TestOutcomes drives the in-process bridge with a backend that answers by
// request id:
//
//	retry-twice: RETRY, RETRY, then OK   -> APPROVED reply, 3 handler calls
//	reject:      REJECT                  -> DLQ record + REJECTED reply
//	retry-ever:  RETRY on every attempt  -> DLQ record + ERROR reply after max_attempts
func TestOutcomes(t *testing.T) {
	leakCheck(t)
	var mu sync.Mutex
	calls := map[string]int{}
	p := newPipeline(t, func(_ context.Context, env *v1.Envelope) backend.Result {
		mu.Lock()
		defer mu.Unlock()
		calls[env.RequestId]++
		switch {
		case env.RequestId == "retry-twice" && calls[env.RequestId] <= 2, env.RequestId == "retry-ever":
			return backend.Result{Outcome: v1.Outcome_OUTCOME_RETRY, Code: v1.ReasonCode_REASON_CODE_BUSY}
		case env.RequestId == "reject":
			return backend.Result{Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_NOT_PERMITTED, Reason: "merchant m-x is not enrolled"}
		}
		return approve(env)
	})
	p.Config.Backend.MaxAttempts = 3
	p.Config.Backend.RetryBackoff = 10 * time.Millisecond
	p.StartTest(t)

	replies := make(chan []byte, 10)
	dev := device(t, p, "dev-1", replies)
	for _, id := range []string{"retry-twice", "reject", "retry-ever"} {
		dev.Publish("payment/request/dev-1", 1, false, `{"request_id":"`+id+`","amount_minor":100,"currency":"EUR"}`).Wait()
	}
	got := awaitReplies(t, replies, 3)
	want := map[string]string{"retry-twice": "APPROVED", "reject": "REJECTED", "retry-ever": "ERROR"}
	for id, status := range want {
		if got[id].Status != status {
			t.Errorf("%s: got status %q, want %q", id, got[id].Status, status)
		}
	}
	if got["retry-ever"].Code != "busy" || got["reject"].Code != "not_permitted" || got["reject"].Reason != "merchant m-x is not enrolled" {
		t.Errorf("negative replies must carry the structured code and the detail: %+v", got)
	}
	mu.Lock()
	if calls["retry-twice"] != 3 || calls["retry-ever"] != 3 || calls["reject"] != 1 {
		t.Errorf("got handler calls %v, want retry-twice 3, retry-ever 3 (max_attempts), reject 1", calls)
	}
	mu.Unlock()

	dlq := readDLQ(t, p.Kafka.Addr(), p.Config.Kafka.DLQTopic, 2)
	if dlq["reject"] != "not_permitted" || dlq["retry-ever"] != "busy" {
		t.Errorf("got DLQ reasons %v, want reject=not_permitted retry-ever=busy", dlq)
	}
}

// newPipeline is the bridge in process on embedded brokers of its own,
// with one backend serving handle; p.Config may be changed before
// p.StartTest.
func newPipeline(t *testing.T, handle backend.Handler) *rig.Rig {
	t.Helper()
	return rig.Test(t, rig.Handler(handle))
}

// device connects a device straight to the MQTT broker, subscribed to its
// reply topic; replies receive the payloads.
func device(t *testing.T, p *rig.Rig, id string, replies chan<- []byte) paho.Client {
	t.Helper()
	dev := paho.NewClient(paho.NewClientOptions().AddBroker(p.DeviceURL()).SetClientID(id))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	t.Cleanup(func() { dev.Disconnect(0) })
	dev.Subscribe("payment/response/"+id, 1, func(_ paho.Client, m paho.Message) { replies <- m.Payload() }).Wait()
	return dev
}

// awaitReplies collects n replies, by request id.
func awaitReplies(t *testing.T, replies <-chan []byte, n int) map[string]transcoder.Reply {
	t.Helper()
	got := map[string]transcoder.Reply{}
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for len(got) < n {
		select {
		case payload := <-replies:
			var r transcoder.Reply
			if json.Unmarshal(payload, &r) == nil {
				got[r.RequestID] = r
			}
		case <-timeout.C:
			t.Fatalf("got replies %v, want %d", got, n)
		}
	}
	return got
}

func approve(env *v1.Envelope) backend.Result {
	return backend.Result{Outcome: v1.Outcome_OUTCOME_OK, Reply: &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}}
}

// leakCheck fails the test if goroutines it started outlive its cleanups.
func leakCheck(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	await.True(t, 30*time.Second, what, cond)
}

// readDLQ returns request id -> reason header of the first n DLQ records.
func readDLQ(t *testing.T, broker, topic string, n int) map[string]string {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	out := map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for len(out) < n && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			env := &v1.Envelope{}
			if err := proto.Unmarshal(r.Value, env); err != nil {
				t.Errorf("DLQ record is not the envelope: %v", err)
				return
			}
			for _, h := range r.Headers {
				if h.Key == "edgebridge-dlq-reason" {
					out[env.RequestId] = string(h.Value)
				}
			}
		})
	}
	return out
}

// TestReadyDaprOnly: with dapr.enabled and no backend targets, readiness
// does not wait for a backend stream but names the component socket and
// the brokers while they are not up (New does no I/O: nothing is up yet).
func TestReadyDaprOnly(t *testing.T) {
	cfg := config.Default()
	cfg.Kafka.DataDir = t.TempDir() // the bridge keeps its group member id there
	cfg.Dapr.Enabled = true
	cfg.Backend.Targets = nil
	cfg.ApplyDefaults()
	cfg.MQTT.Broker = "tcp://127.0.0.1:1"
	cfg.Kafka.Brokers = []string{"127.0.0.1:1"}
	cfg.Dapr.SocketFolder = t.TempDir()
	b, err := bridge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ok, why := b.Ready()
	want := []string{"mqtt not subscribed", "kafka unreachable or refusing writes", "dapr component socket not serving"}
	if ok || !slices.Equal(why, want) {
		t.Errorf("got ready %v %q, want false %q", ok, why, want)
	}
}

// Kafka refuses a request record for good (the request topic's
// max.message.bytes is lower than the bridge was told): that record alone
// is dead-lettered as a stub and answered REJECTED; the requests around it
// in the same batch are written once and answered; the bridge stays ready.
func TestKafkaRefusalIsFinalForThatRecordOnly(t *testing.T) {
	leakCheck(t)
	p := newPipeline(t, func(_ context.Context, env *v1.Envelope) backend.Result { return approve(env) })
	createTopic(t, p, p.Config.Kafka.Topic, 600)
	b := p.StartTest(t)
	replies := make(chan []byte, 10)
	dev := device(t, p, "dev-1", replies)
	// A long tracestate makes the one envelope larger than the topic allows.
	big := `{"request_id":"r-big","amount_minor":100,"currency":"EUR","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"` +
		strings.Repeat("s", 500) + `"}`
	for _, body := range []string{`{"request_id":"r-1","amount_minor":100,"currency":"EUR"}`, big, `{"request_id":"r-2","amount_minor":100,"currency":"EUR"}`} {
		dev.Publish("payment/request/dev-1", 1, false, body) // one batch, if they arrive together
	}
	got := awaitReplies(t, replies, 3)
	if r := got["r-big"]; r.Status != transcoder.StatusRejected || r.Code != "internal" || !strings.HasPrefix(r.Reason, "kafka_record_too_large") {
		t.Errorf("refused request: got %+v, want REJECTED internal kafka_record_too_large", r)
	}
	if got["r-1"].Status != transcoder.StatusApproved || got["r-2"].Status != transcoder.StatusApproved {
		t.Errorf("requests around the refused one: got %+v", got)
	}
	if ok, why := b.Ready(); !ok {
		t.Errorf("bridge not ready after a refusal: %v", why)
	}
	if n := testutil.ToFloat64(b.Metrics().Produced); n != 3 { // two requests, one dead letter
		t.Errorf("got %v records produced, want 3 (none written twice)", n)
	}
	if n := testutil.ToFloat64(b.Metrics().DLQ.WithLabelValues("kafka_record_too_large")); n != 1 {
		t.Errorf("got %v dead letters kafka_record_too_large, want 1", n)
	}
}

// A request record whose device id forms no valid reply topic (written to
// Kafka by something other than this bridge's intake): the backend's reply
// is not published — publishing it would get the bridge disconnected by
// Mosquitto, again after every reconnect — but counted and logged, and the
// record is finished, so nothing behind it waits.
func TestReplyToInvalidTopicIsNotPublished(t *testing.T) {
	leakCheck(t)
	p := newPipeline(t, func(_ context.Context, env *v1.Envelope) backend.Result { return approve(env) })
	b := p.StartTest(t)
	replies := make(chan []byte, 1)
	device(t, p, "dev-2", replies)
	for _, device := range []string{"dev\x01bad", "dev-2"} {
		env, err := transcoder.New(0).Decode(transcoder.Input{DeviceID: device, Topic: "payment/request/" + device,
			Payload: []byte(`{"request_id":"r-1","amount_minor":100,"currency":"EUR"}`)})
		if err != nil {
			t.Fatal(err)
		}
		value, _ := proto.Marshal(env)
		prod, err := kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{p.Kafka.Addr()}})
		if err != nil {
			t.Fatal(err)
		}
		if err := prod.Write(context.Background(), kafkapipe.Record{Topic: p.Config.Kafka.Topic, Key: []byte("same-partition"), Value: value}); err != nil {
			t.Fatal(err)
		}
		prod.Close()
	}
	if got := awaitReplies(t, replies, 1); got["r-1"].Status != transcoder.StatusApproved {
		t.Fatalf("the request behind it: got %+v, want APPROVED", got)
	}
	waitUntil(t, "the invalid topic counted", func() bool { return testutil.ToFloat64(b.Metrics().InvalidTopics) == 1 })
}

// createTopic creates topic (2 partitions) with max.message.bytes before
// the bridge does.
func createTopic(t *testing.T, p *rig.Rig, topic string, maxMessageBytes int) {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	res, err := (&kafka.Client{Addr: kafka.TCP(p.Kafka.Addr()), Transport: tr}).CreateTopics(context.Background(), &kafka.CreateTopicsRequest{
		Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: 2, ReplicationFactor: 1,
			ConfigEntries: []kafka.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: strconv.Itoa(maxMessageBytes)}}}}})
	if err != nil || res.Errors[topic] != nil {
		t.Fatalf("create topic %s: %v %v", topic, err, res.Errors)
	}
}

// A DLQ topic that refuses even the 4 KiB stub of a dead letter stalls
// intake until an operator fixes it: the bridge keeps the message
// un-PUBACKed (never drops it) and says so in its readiness, also between
// writes, when the broker still answers pings.
func TestDeadLetterRefusedEvenAsStubMakesBridgeUnready(t *testing.T) {
	leakCheck(t)
	p := newPipeline(t, func(_ context.Context, env *v1.Envelope) backend.Result { return approve(env) })
	createTopic(t, p, p.Config.Kafka.DLQTopic, 200)
	b := p.StartTest(t)
	dev := device(t, p, "dev-1", make(chan []byte, 1))
	dev.Publish("payment/request/dev-1", 1, false, `{"request_id":"r-1","amount_minor":-1,"currency":"EUR"}`)
	waitUntil(t, "the bridge unready", func() bool {
		ok, why := b.Ready()
		return !ok && slices.ContainsFunc(why, func(w string) bool {
			return strings.HasPrefix(w, "intake paused, kafka writes failing: kafka refused the write: ")
		})
	})
	if n := testutil.ToFloat64(b.Metrics().DLQ.WithLabelValues("invalid_amount")); n != 0 {
		t.Fatalf("counted %v dead letters that Kafka refused", n)
	}
}
