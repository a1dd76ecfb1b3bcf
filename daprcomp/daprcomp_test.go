package daprcomp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	components "github.com/dapr/dapr/pkg/proto/components/v1"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/daprcomp"
	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/kafkapipe"
	kitrig "github.com/edgebridge/edgebridge/kit/rig"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/transcoder"
)

const (
	requestTopic = "edgebridge.payment.requests"
	dlqTopic     = "edgebridge.payment.dlq"
	replyTopic   = "payment.replies"
)

// rig is the component on a socket in a temp folder, with embedded Kafka
// and MQTT behind it, the bridge's real MQTT client and Kafka producer,
// and an MQTT subscriber standing in for devices.
type rig struct {
	brokers  *kitrig.Rig
	t        *testing.T
	socket   string
	kafka    *embedded.Kafka
	producer *kafkapipe.Producer
	unhealth atomic.Value // error or nil
	srv      *daprcomp.Server
	stop     context.CancelFunc
	done     chan error
	device   paho.Client
	mqttMsgs chan paho.Message

	evMu   sync.Mutex
	events map[daprcomp.EventKind]int
}

func (r *rig) countEvent(e daprcomp.Event) {
	r.evMu.Lock()
	r.events[e.Kind]++
	r.evMu.Unlock()
}

func (r *rig) eventCounts() map[daprcomp.EventKind]int {
	r.evMu.Lock()
	defer r.evMu.Unlock()
	return maps.Clone(r.events)
}

func newRig(t *testing.T, cfg daprcomp.Config) *rig {
	t.Helper()
	brokers := kitrig.Test(t, kitrig.NoBackend()) // the component runs, not the bridge
	dir, k, m := brokers.Dir, brokers.Kafka, brokers.MQTT

	r := &rig{brokers: brokers, t: t, socket: filepath.Join(dir, "sockets", "edgebridge.sock"), kafka: k, mqttMsgs: make(chan paho.Message, 100),
		events: map[daprcomp.EventKind]int{}}
	r.unhealth.Store(errNone)
	client, err := mqttin.New(mqttin.Config{Broker: "tcp://" + m.Addr(), ClientID: "bridge"})
	if err != nil {
		t.Fatal(err)
	}
	r.producer, err = kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{k.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := kafkapipe.EnsureTopics(context.Background(), []string{k.Addr()}, kafkapipe.Security{}, 2, requestTopic, dlqTopic); err != nil {
		t.Fatal(err)
	}
	cfg.SocketPath = r.socket
	cfg.Brokers = []string{k.Addr()}
	cfg.Partitions = 2
	cfg.RequestTopic, cfg.DLQTopic, cfg.ReplyTopic = requestTopic, dlqTopic, replyTopic
	cfg.BackendGroup = "edgebridge"
	cfg.DeviceReplyTopic = "payment/response/{device_id}"
	cfg.CommitInterval = 20 * time.Millisecond
	cfg.SessionTimeout = 6 * time.Second
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = 10 * time.Millisecond
	}
	r.srv, err = daprcomp.New(cfg, daprcomp.Deps{MQTT: client, Kafka: r.producer, Healthy: func() error {
		if err := r.unhealth.Load().(error); err != errNone {
			return err
		}
		return nil
	}}, daprcomp.WithLogger(slog.New(slog.DiscardHandler)), daprcomp.WithEventHook(r.countEvent))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	mqttDone := make(chan error, 1)
	go func() { mqttDone <- client.Run(ctx) }()
	r.stop = cancel
	r.done = make(chan error, 1)
	go func() { r.done <- r.srv.Run(ctx) }()
	t.Cleanup(func() {
		r.shutdown()
		<-mqttDone
		r.producer.Close()
	})

	opts := paho.NewClientOptions().AddBroker("tcp://" + m.Addr()).SetClientID("device")
	r.device = paho.NewClient(opts)
	if tok := r.device.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	t.Cleanup(func() { r.device.Disconnect(100) })
	if tok := r.device.Subscribe("#", 1, func(_ paho.Client, msg paho.Message) { r.mqttMsgs <- msg }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device subscribe: %v", tok.Error())
	}
	waitFor(t, "socket serving", func() bool { return r.srv.Serving() })
	return r
}

// errNone stands for "healthy" in the atomic.Value (it cannot hold nil).
var errNone = errors.New("none")

func (r *rig) shutdown() error {
	r.stop()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(60 * time.Second):
		r.t.Fatal("server did not stop")
		return nil
	}
}

// dial opens a new connection: a new component instance, as a daprd has.
func (r *rig) dial() *grpc.ClientConn {
	r.t.Helper()
	cc, err := grpc.NewClient("unix://"+r.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { cc.Close() })
	return cc
}

// pubsub dials and initialises a pubsub instance for consumerID.
func (r *rig) pubsub(consumerID string, extra map[string]string) components.PubSubClient {
	r.t.Helper()
	c := components.NewPubSubClient(r.dial())
	md := map[string]string{daprcomp.MetaConsumerID: consumerID}
	for k, v := range extra {
		md[k] = v
	}
	if _, err := c.Init(ctx(r.t), &components.PubSubInitRequest{Metadata: &components.MetadataRequest{Properties: md}}); err != nil {
		r.t.Fatalf("init: %v", err)
	}
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// subscribe opens a PullMessages stream on topic.
func subscribe(t *testing.T, c components.PubSubClient, topic string) (components.PubSub_PullMessagesClient, context.CancelFunc) {
	t.Helper()
	sctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.PullMessages(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&components.PullMessagesRequest{Topic: &components.Topic{Name: topic}}); err != nil {
		t.Fatal(err)
	}
	return s, cancel
}

// recvN receives n messages, failing after a generous bound.
func recvN(t *testing.T, s components.PubSub_PullMessagesClient, n int) []*components.PullMessagesResponse {
	t.Helper()
	type res struct {
		m   *components.PullMessagesResponse
		err error
	}
	out := make([]*components.PullMessagesResponse, 0, n)
	for len(out) < n {
		ch := make(chan res, 1)
		go func() { m, err := s.Recv(); ch <- res{m, err} }()
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("recv after %d of %d: %v", len(out), n, r.err)
			}
			out = append(out, r.m)
		case <-time.After(60 * time.Second):
			t.Fatalf("received %d of %d messages", len(out), n)
		}
	}
	return out
}

func ack(t *testing.T, s components.PubSub_PullMessagesClient, id string, failure string) {
	t.Helper()
	req := &components.PullMessagesRequest{AckMessageId: id}
	if failure != "" {
		req.AckError = &components.AckMessageError{Message: failure}
	}
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	await.True(t, 60*time.Second, what, cond)
}

// committed sums the group's committed offsets over topic's 2 partitions.
func (r *rig) committed(group, topic string) int64 {
	cl := &kafka.Client{Addr: kafka.TCP(r.kafka.Addr()), Timeout: 5 * time.Second, Transport: &kafka.Transport{}}
	defer cl.Transport.(*kafka.Transport).CloseIdleConnections()
	resp, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0, 1}}})
	if err != nil {
		return -1
	}
	var sum int64
	for _, p := range resp.Topics[topic] {
		if p.CommittedOffset > 0 {
			sum += p.CommittedOffset
		}
	}
	return sum
}

// records reads every record of topic.
func (r *rig) records(topic string, n int) []*kgo.Record {
	r.t.Helper()
	return r.brokers.RecordsTest(r.t, topic, n)
}

// traceparent is the W3C trace context every test device request carries.
const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// produceRequest writes a device request the way the bridge does.
func (r *rig) produceRequest(device, requestID string) string {
	r.t.Helper()
	env, err := transcoder.New(0).Decode(transcoder.Input{DeviceID: device, Topic: "payment/request/" + device,
		Payload:    fmt.Appendf(nil, `{"request_id":%q,"amount_minor":1250,"currency":"EUR","merchant_id":"m-1","traceparent":%q}`, requestID, traceparent),
		ReceivedAt: time.Now()})
	if err != nil {
		r.t.Fatal(err)
	}
	v, _ := proto.Marshal(env)
	if err := r.producer.Write(context.Background(), kafkapipe.Record{Topic: requestTopic, Key: []byte(device), Value: v,
		Headers: []kafka.Header{{Key: kafkapipe.HeaderContentType, Value: []byte(kafkapipe.ContentTypeEnvelope)}}}); err != nil {
		r.t.Fatal(err)
	}
	return env.MessageId
}

func (r *rig) mqtt(topic string) []byte {
	r.t.Helper()
	for {
		select {
		case m := <-r.mqttMsgs:
			if m.Topic() == topic {
				return m.Payload()
			}
		case <-time.After(30 * time.Second):
			r.t.Fatalf("no MQTT message on %s", topic)
		}
	}
}

func code(err error) codes.Code { return status.Code(err) }

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestDeviceRequestsAsCloudEvents: a subscriber to the request topic gets
// each device request as a CloudEvent whose data is the request as JSON;
// ACKed ones are committed; a corrupt record goes to the DLQ instead.
func TestDeviceRequestsAsCloudEvents(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	ps := r.pubsub("payments-app", nil)
	want := map[string]string{}
	for i := range 6 {
		dev := fmt.Sprintf("dev-%d", i%3)
		want[r.produceRequest(dev, fmt.Sprintf("req-%d", i))] = dev
	}
	if err := r.producer.Write(context.Background(), kafkapipe.Record{Topic: requestTopic, Key: []byte("dev-x"), Value: []byte("not protobuf"),
		Headers: []kafka.Header{{Key: kafkapipe.HeaderContentType, Value: []byte(kafkapipe.ContentTypeEnvelope)}}}); err != nil {
		t.Fatal(err)
	}
	s, _ := subscribe(t, ps, requestTopic)
	for _, m := range recvN(t, s, 6) {
		if m.ContentType != "application/cloudevents+json" || m.TopicName != requestTopic {
			t.Errorf("got content type %q topic %q", m.ContentType, m.TopicName)
		}
		var ev struct {
			SpecVersion, ID, Type, Subject, DataContentType, TraceParent string
			Data                                                         daprcomp.Request
		}
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("not JSON: %v: %s", err, m.Data)
		}
		dev, ok := want[ev.ID]
		if !ok || ev.SpecVersion != "1.0" || ev.Type != daprcomp.RequestEventType || ev.Subject != dev ||
			ev.Data.DeviceID != dev || ev.Data.MessageID != ev.ID || !strings.HasPrefix(ev.Data.RequestID, "req-") ||
			ev.Data.AmountMinor != 1250 || ev.Data.Currency != "EUR" || ev.TraceParent != traceparent {
			t.Errorf("unexpected event %s", m.Data)
		}
		delete(want, ev.ID)
		if m.Metadata[daprcomp.MetaAttempt] != "1" || m.Metadata[daprcomp.MetaPartitionKey] != dev {
			t.Errorf("metadata %v", m.Metadata)
		}
		ack(t, s, m.Id, "")
	}
	if len(want) != 0 {
		t.Errorf("not delivered: %v", want)
	}
	dl := r.records(dlqTopic, 1)[0]
	if reason := header(dl, kafkapipe.HeaderReason); reason != daprcomp.ReasonCorrupt || string(dl.Value) != "not protobuf" {
		t.Errorf("DLQ record reason %q value %q", reason, dl.Value)
	}
	waitFor(t, "7 offsets committed", func() bool { return r.committed("payments-app", requestTopic) == 7 })
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// TestRetryThenSucceedOrDeadLetter: an ACK with an error redelivers with
// the attempt counted; after max attempts the message is dead-lettered
// with the app's error, and both end up committed.
func TestRetryThenSucceedOrDeadLetter(t *testing.T) {
	r := newRig(t, daprcomp.Config{MaxAttempts: 3})
	ps := r.pubsub("retrier", nil)
	for _, id := range []string{"flaky", "doomed"} {
		if _, err := ps.Publish(ctx(t), &components.PublishRequest{Topic: "orders", Data: []byte(id), Metadata: map[string]string{"partitionKey": id}}); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := subscribe(t, ps, "orders")
	attempts := map[string][]string{}
	for done := 0; done < 2; {
		m := recvN(t, s, 1)[0]
		body := string(m.Data)
		attempts[body] = append(attempts[body], m.Metadata[daprcomp.MetaAttempt])
		if m.Metadata[daprcomp.MetaPartitionKey] != body {
			t.Errorf("%s: partitionKey %q, want the key it was published with", body, m.Metadata[daprcomp.MetaPartitionKey])
		}
		switch {
		case body == "flaky" && len(attempts[body]) < 3:
			ack(t, s, m.Id, "database busy")
		case body == "flaky":
			ack(t, s, m.Id, "")
			done++
		default:
			ack(t, s, m.Id, "cannot parse order")
			if len(attempts[body]) == 3 {
				done++
			}
		}
	}
	for body, got := range attempts {
		if !slices.Equal(got, []string{"1", "2", "3"}) {
			t.Errorf("%s: attempts %v, want [1 2 3]", body, got)
		}
	}
	dl := r.records(dlqTopic, 1)[0]
	if string(dl.Value) != "doomed" || header(dl, kafkapipe.HeaderReason) != daprcomp.ReasonAppFailures ||
		header(dl, kafkapipe.HeaderDetail) != "cannot parse order" || header(dl, kafkapipe.HeaderSourceTopic) != "orders" {
		t.Errorf("DLQ record %q headers %v", dl.Value, dl.Headers)
	}
	waitFor(t, "both committed", func() bool { return r.committed("retrier", "orders") == 2 })
	want := map[daprcomp.EventKind]int{daprcomp.EventPublished: 2, daprcomp.EventSubscribed: 1, daprcomp.EventDelivered: 2,
		daprcomp.EventRedelivered: 4, daprcomp.EventFailed: 5, daprcomp.EventAcked: 1, daprcomp.EventDeadLettered: 1}
	if got := r.eventCounts(); !maps.Equal(got, want) {
		t.Errorf("got events %v, want %v", got, want)
	}
}

// TestPublishAndBulkPublish: plain pubsub through Kafka, one consumer
// group per consumerID (two apps each get everything), the request topic
// refused, bulk entries that fail reported one by one.
func TestPublishAndBulkPublish(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	pub := r.pubsub("publisher", nil)
	for i := range 3 {
		if _, err := pub.Publish(ctx(t), &components.PublishRequest{Topic: "events", Data: fmt.Appendf(nil, `{"specversion":"1.0","id":"e%d","data":%d}`, i, i)}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := pub.BulkPublish(ctx(t), &components.BulkPublishRequest{Topic: "events", Entries: []*components.BulkMessageEntry{
		{EntryId: "a", Event: []byte(`{"id":"a"}`)}, {EntryId: "b", Event: []byte(`{"id":"b"}`)},
	}})
	if err != nil || len(resp.FailedEntries) != 0 {
		t.Fatalf("bulk publish: %v %v", err, resp.GetFailedEntries())
	}
	for _, app := range []string{"app-a", "app-b"} {
		s, _ := subscribe(t, r.pubsub(app, nil), "events")
		got := map[string]bool{}
		for _, m := range recvN(t, s, 5) {
			got[string(m.Data)] = true
			ack(t, s, m.Id, "")
		}
		if len(got) != 5 || !got[`{"id":"a"}`] || !got[`{"specversion":"1.0","id":"e2","data":2}`] {
			t.Errorf("%s got %v", app, got)
		}
		waitFor(t, app+" committed", func() bool { return r.committed(app, "events") == 5 })
	}

	_, err = pub.Publish(ctx(t), &components.PublishRequest{Topic: requestTopic, Data: []byte("{}")})
	if code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "device requests") {
		t.Errorf("publish to request topic: got %v, want InvalidArgument", err)
	}
	_, err = pub.Publish(ctx(t), &components.PublishRequest{Topic: "bad topic!", Data: []byte("{}")})
	if code(err) != codes.InvalidArgument {
		t.Errorf("publish to invalid topic: got %v, want InvalidArgument", err)
	}
	resp, err = pub.BulkPublish(ctx(t), &components.BulkPublishRequest{Topic: replyTopic, Entries: []*components.BulkMessageEntry{
		{EntryId: "ok", Event: []byte(`{"device_id":"d9","request_id":"r9","status":"declined"}`)},
		{EntryId: "bad", Event: []byte(`{"device_id":"d9"}`)},
	}})
	if err != nil || len(resp.FailedEntries) != 1 || resp.FailedEntries[0].EntryId != "bad" || !strings.Contains(resp.FailedEntries[0].Error, "request_id") {
		t.Errorf("bulk reply: got %v %v, want entry bad failed for request_id", err, resp.GetFailedEntries())
	}
	var rep transcoder.Reply
	if err := json.Unmarshal(r.mqtt("payment/response/d9"), &rep); err != nil || rep.Status != transcoder.StatusDeclined || rep.RequestID != "r9" {
		t.Errorf("bulk reply on MQTT: %+v %v", rep, err)
	}
}

// TestReplyTopicSendsToDevice: publishing to the reply topic sends the
// reply over MQTT (from a CloudEvent as daprd wraps it, or raw); a body
// that is not a reply is refused with the reason.
func TestReplyTopicSendsToDevice(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	ps := r.pubsub("payments-app", nil)
	body := `{"device_id":"term-7","request_id":"r-1","status":"approved","reason":"ok"}`
	ce := `{"specversion":"1.0","id":"x","source":"payments-app","type":"com.dapr.event.sent","datacontenttype":"application/json","data":` + body + `}`
	if _, err := ps.Publish(ctx(t), &components.PublishRequest{Topic: replyTopic, Data: []byte(ce)}); err != nil {
		t.Fatal(err)
	}
	var rep transcoder.Reply
	if err := json.Unmarshal(r.mqtt("payment/response/term-7"), &rep); err != nil {
		t.Fatal(err)
	}
	if want := (transcoder.Reply{RequestID: "r-1", MessageID: v1.MessageID("term-7", "r-1"), Status: "APPROVED", Reason: "ok"}); rep != want {
		t.Errorf("got reply %+v, want %+v", rep, want)
	}
	// A per-instance reply topic from Init metadata.
	other := r.pubsub("other-app", map[string]string{daprcomp.MetaReplyTopic: "other.replies"})
	if _, err := other.Publish(ctx(t), &components.PublishRequest{Topic: "other.replies", Data: []byte(`{"device_id":"term-8","request_id":"r-2","status":"ERROR"}`)}); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(r.mqtt("payment/response/term-8"), &rep); err != nil || rep.Status != "ERROR" {
		t.Errorf("raw reply: %+v %v", rep, err)
	}
	for name, bad := range map[string]string{
		"not json":  `nope`,
		"no device": `{"request_id":"r","status":"APPROVED"}`,
		"wildcard":  `{"device_id":"a/#","request_id":"r","status":"APPROVED"}`,
		// A valid device id by the reply's rules, but no valid MQTT topic:
		// refused by the publisher, never sent (Mosquitto would disconnect).
		"control char": `{"device_id":"d\u0001","request_id":"r","status":"APPROVED"}`,
		"bad status":   `{"device_id":"d","request_id":"r","status":"MAYBE"}`,
		"no request":   `{"device_id":"d","status":"APPROVED"}`,
		"ce bad data":  `{"specversion":"1.0","id":"x","data":{"device_id":"d"}}`,
	} {
		_, err := ps.Publish(ctx(t), &components.PublishRequest{Topic: replyTopic, Data: []byte(bad)})
		if code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
}

// TestStreamBreakRedelivers: a stream that breaks with messages un-ACKed
// (daprd killed) commits what was ACKed; the next stream of the same
// consumer gets every message that was not ACKed.
func TestStreamBreakRedelivers(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	ps := r.pubsub("crashy", nil)
	for i := range 10 {
		if _, err := ps.Publish(ctx(t), &components.PublishRequest{Topic: "jobs", Data: fmt.Appendf(nil, "job-%d", i), Metadata: map[string]string{"partitionKey": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	s, cancel := subscribe(t, ps, "jobs")
	unacked := map[string]bool{}
	for i, m := range recvN(t, s, 10) {
		if i%2 == 0 {
			ack(t, s, m.Id, "")
		} else {
			unacked[string(m.Data)] = true
		}
	}
	cancel() // daprd gone

	ps2 := r.pubsub("crashy", nil) // daprd back: new connection, Init, subscribe
	s2, cancel2 := subscribe(t, ps2, "jobs")
	// ACK everything that arrives: a rebalance while the old member leaves
	// can deliver a message again (at least once).
	var mu sync.Mutex
	got := map[string]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := s2.Recv()
			if err != nil {
				return
			}
			mu.Lock()
			got[string(m.Data)] = true
			mu.Unlock()
			if s2.Send(&components.PullMessagesRequest{AckMessageId: m.Id}) != nil {
				return
			}
		}
	}()
	waitFor(t, "all committed", func() bool { return r.committed("crashy", "jobs") == 10 })
	cancel2()
	<-done
	if !containsAll(got, unacked) {
		t.Errorf("redelivered %v, want every un-ACKed one of %v", got, unacked)
	}
}

func containsAll(got, want map[string]bool) bool {
	for k := range want {
		if !got[k] {
			return false
		}
	}
	return true
}

// TestShutdownDrainsSubscriptions: when the server stops, a subscription
// keeps its stream until the app ACKed what it holds, commits, then ends
// the stream; the socket file is removed.
func TestShutdownDrainsSubscriptions(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	ps := r.pubsub("drainer", nil)
	for i := range 4 {
		if _, err := ps.Publish(ctx(t), &components.PublishRequest{Topic: "work", Data: fmt.Appendf(nil, "w%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := subscribe(t, ps, "work")
	held := recvN(t, s, 4)
	stopped := make(chan error, 1)
	go func() { stopped <- r.shutdown() }()
	waitFor(t, "socket not serving", func() bool { return !r.srv.Serving() })
	for _, m := range held {
		ack(t, s, m.Id, "")
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Errorf("stream end: got %v, want EOF", err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if got := r.committed("drainer", "work"); got != 4 {
		t.Errorf("committed %d, want 4", got)
	}
	if _, err := os.Lstat(r.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after shutdown: %v", err)
	}
}

// TestInitPingFeaturesAndPreconditions covers the small PubSub calls.
func TestInitPingFeaturesAndPreconditions(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	c := components.NewPubSubClient(r.dial())
	_, err := c.Init(ctx(t), &components.PubSubInitRequest{Metadata: &components.MetadataRequest{Properties: map[string]string{
		"maxInFlight": "0", "retryBackoff": "soon", "initialOffset": "middle", "colour": "blue", "allowedTopics": "a,b",
		"consumerID": "edgebridge",
	}}})
	if code(err) != codes.InvalidArgument {
		t.Fatalf("bad init: got %v, want InvalidArgument", err)
	}
	for _, key := range []string{"maxInFlight", "retryBackoff", "initialOffset", "colour", "consumerID"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("init error does not name %s: %v", key, err)
		}
	}
	if strings.Contains(err.Error(), "allowedTopics") {
		t.Errorf("init error names Dapr's own key allowedTopics: %v", err)
	}
	// No Init on this connection yet: subscribing is refused.
	s, _ := subscribe(t, c, "x")
	if _, err := s.Recv(); code(err) != codes.FailedPrecondition {
		t.Errorf("subscribe before init: got %v, want FailedPrecondition", err)
	}
	f, err := c.Features(ctx(t), &components.FeaturesRequest{})
	if err != nil || !slices.Contains(f.Features, "BULK_PUBLISH") {
		t.Errorf("features: %v %v", f, err)
	}
	if _, err := c.Ping(ctx(t), &components.PingRequest{}); err != nil {
		t.Errorf("ping healthy: %v", err)
	}
	r.unhealth.Store(errors.New("kafka unreachable"))
	if _, err := c.Ping(ctx(t), &components.PingRequest{}); code(err) != codes.Unavailable || !strings.Contains(err.Error(), "kafka unreachable") {
		t.Errorf("ping unhealthy: got %v, want Unavailable naming the cause", err)
	}
	b := components.NewOutputBindingClient(r.dial())
	if _, err := b.Ping(ctx(t), &components.PingRequest{}); code(err) != codes.Unavailable {
		t.Errorf("binding ping unhealthy: got %v, want Unavailable", err)
	}
}

// TestOutputBinding: "create" publishes to the MQTT topic in metadata;
// everything else is refused clearly.
func TestOutputBinding(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	b := components.NewOutputBindingClient(r.dial())
	if _, err := b.Init(ctx(t), &components.OutputBindingInitRequest{Metadata: &components.MetadataRequest{Properties: map[string]string{"host": "x"}}}); code(err) != codes.InvalidArgument {
		t.Errorf("init with metadata: got %v, want InvalidArgument", err)
	}
	if _, err := b.Init(ctx(t), &components.OutputBindingInitRequest{Metadata: &components.MetadataRequest{}}); err != nil {
		t.Fatal(err)
	}
	ops, err := b.ListOperations(ctx(t), &components.ListOperationsRequest{})
	if err != nil || !slices.Equal(ops.Operations, []string{"create"}) {
		t.Errorf("operations: %v %v", ops, err)
	}
	resp, err := b.Invoke(ctx(t), &components.InvokeRequest{Operation: "create", Data: []byte(`{"cmd":"reboot"}`), Metadata: map[string]string{"topic": "device/term-3/command"}})
	if err != nil || resp.Metadata["topic"] != "device/term-3/command" {
		t.Fatalf("invoke: %v %v", resp, err)
	}
	if got := string(r.mqtt("device/term-3/command")); got != `{"cmd":"reboot"}` {
		t.Errorf("device got %q", got)
	}
	for name, req := range map[string]*components.InvokeRequest{
		"unknown operation": {Operation: "delete", Metadata: map[string]string{"topic": "a"}},
		"missing topic":     {Operation: "create"},
		"wildcard topic":    {Operation: "create", Metadata: map[string]string{"topic": "device/+/command"}},
		"reserved topic":    {Operation: "create", Metadata: map[string]string{"topic": "$SYS/x"}},
	} {
		if _, err := b.Invoke(ctx(t), req); code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
	// Only device commands and reply topics: never a request topic.
	for _, topic := range []string{"payment/request/term-3", "payment/request/term-3/x", "device/term-3", "device/term-3/command/x", "other"} {
		_, err := b.Invoke(ctx(t), &components.InvokeRequest{Operation: "create", Data: []byte("x"), Metadata: map[string]string{"topic": topic}})
		if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "dapr.binding_topics") {
			t.Errorf("topic %s: got %v, want PermissionDenied naming dapr.binding_topics", topic, err)
		}
	}
	if _, err := b.Invoke(ctx(t), &components.InvokeRequest{Operation: "create", Data: []byte(`{}`), Metadata: map[string]string{"topic": "payment/response/term-3"}}); err != nil {
		t.Errorf("a device reply topic: %v", err)
	}
	if _, err := b.Ping(ctx(t), &components.PingRequest{}); err != nil {
		t.Errorf("ping: %v", err)
	}
}

// TestReflectionAndHealth: daprd discovers the services by reflection;
// grpc.health.v1 answers for the server and each service.
func TestReflectionAndHealth(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	cc := r.dial()
	rc, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"dapr.proto.components.v1.PubSub", "dapr.proto.components.v1.OutputBinding", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
	hc := healthpb.NewHealthClient(cc)
	for _, svc := range []string{"", "dapr.proto.components.v1.PubSub"} {
		h, err := hc.Check(ctx(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v %v", svc, h, err)
		}
	}
}

// TestSocketFile: mode 0660; a stale socket is replaced; a live one or a
// file that is not a socket is left alone with a clear error.
func TestSocketFile(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	fi, err := os.Stat(r.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	entries, _ := os.ReadDir(filepath.Dir(r.socket))
	if len(entries) != 1 {
		t.Errorf("socket folder holds %d entries, want only the socket", len(entries))
	}

	run := func(path string) error {
		srv, err := daprcomp.New(daprcomp.Config{SocketPath: path, Brokers: []string{"127.0.0.1:1"}, RequestTopic: "a", DLQTopic: "b",
			ReplyTopic: "c", DeviceReplyTopic: "d/{device_id}", DrainTimeout: time.Second},
			daprcomp.Deps{MQTT: nopMQTT{}, Kafka: r.producer, Healthy: func() error { return nil }},
			daprcomp.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		c, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Run(c) }()
		defer func() { cancel(); <-done }()
		for !srv.Serving() {
			select {
			case err := <-done:
				done <- err
				return err
			case <-time.After(5 * time.Millisecond):
			}
		}
		return nil
	}
	if err := run(r.socket); !errors.Is(err, daprcomp.ErrSocketInUse) {
		t.Errorf("live socket: got %v, want ErrSocketInUse", err)
	}

	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a crashed process leaves this behind
	if err := run(stale); err != nil {
		t.Errorf("stale socket: %v", err)
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after stop: %v", err)
	}

	plain := filepath.Join(dir, "plain.sock")
	if err := os.WriteFile(plain, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(plain); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: got %v, want 'not a socket'", err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "keep me" {
		t.Errorf("regular file was touched")
	}
}

type nopMQTT struct{}

func (nopMQTT) Publish(context.Context, string, []byte) error { return nil }

// An app that subscribes to two new topics and publishes to both at once:
// the subscriptions create the topics while the publishes run, and every
// publish waits until Kafka serves its topic (it used to fail Unavailable
// with UNKNOWN_TOPIC_OR_PARTITION), round after round.
func TestPublishToTopicsBeingCreated(t *testing.T) {
	r := newRig(t, daprcomp.Config{})
	pub := r.pubsub("publisher", nil)
	// The producer's metadata is loaded before the new topics exist.
	if _, err := pub.Publish(ctx(t), &components.PublishRequest{Topic: "warm-up", Data: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	const rounds = 10
	for round := range rounds {
		topics := []string{fmt.Sprintf("new-%d-a", round), fmt.Sprintf("new-%d-b", round)}
		subs := make([]components.PubSub_PullMessagesClient, len(topics))
		var wg sync.WaitGroup
		errs := make([]error, len(topics))
		apps := []components.PubSubClient{r.pubsub(fmt.Sprintf("app-%d-a", round), nil), r.pubsub(fmt.Sprintf("app-%d-b", round), nil)}
		for i, topic := range topics {
			subs[i], _ = subscribe(t, apps[i], topic) // returns once asked: the topic is created meanwhile
			wg.Go(func() {
				_, errs[i] = pub.Publish(ctx(t), &components.PublishRequest{Topic: topic, Data: []byte(topic)})
			})
		}
		wg.Wait()
		for i, topic := range topics {
			if errs[i] != nil {
				t.Fatalf("round %d: publish to %s: %v", round, topic, errs[i])
			}
			m := recvN(t, subs[i], 1)[0]
			if string(m.Data) != topic || m.TopicName != topic {
				t.Fatalf("round %d: subscription to %s got %q from %s", round, topic, m.Data, m.TopicName)
			}
			ack(t, subs[i], m.Id, "")
		}
	}
}
