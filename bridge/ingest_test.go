package bridge

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/transcoder"
)

// collect takes what is queued after the first message, never more than
// the limit; with a linger it also waits that long for more (kafka.batch_timeout).
func TestCollect(t *testing.T) {
	ctx := context.Background()
	msgs := make(chan int, 10)
	for i := range 5 {
		msgs <- i
	}
	got, ok := collect(ctx, msgs, nil, nil, 3, 0)
	if !ok || len(got) != 3 {
		t.Fatalf("limit 3: got %v %v", got, ok)
	}
	got, ok = collect(ctx, msgs, nil, nil, 10, 0)
	if !ok || len(got) != 2 || got[0] != 3 {
		t.Fatalf("no linger: got %v %v, want the 2 queued", got, ok)
	}

	synctest.Test(t, func(t *testing.T) {
		msgs := make(chan int)
		go func() {
			msgs <- 1
			time.Sleep(40 * time.Millisecond) // within the linger
			msgs <- 2
			time.Sleep(100 * time.Millisecond) // after it
			msgs <- 3
		}()
		start := time.Now()
		got, ok := collect(context.Background(), msgs, nil, nil, 10, 50*time.Millisecond)
		if !ok || len(got) != 2 {
			t.Fatalf("linger 50ms: got %v, want [1 2]", got)
		}
		if waited := time.Since(start); waited != 50*time.Millisecond {
			t.Fatalf("waited %v, want the 50ms linger", waited)
		}
		if got, _ := collect(context.Background(), msgs, nil, nil, 10, 0); len(got) != 1 || got[0] != 3 {
			t.Fatalf("next batch %v", got)
		}
	})

	// Two sources (the subscription and the in-process intake): both
	// feed one batch.
	a, b := make(chan int, 4), make(chan int, 4)
	a <- 1
	b <- 2
	b <- 3
	if got, ok := collect(ctx, a, b, nil, 10, 0); !ok || len(got) != 3 {
		t.Fatalf("two sources: got %v, want all 3", got)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, ok := collect(cctx, make(chan int), nil, nil, 10, time.Second); ok {
		t.Fatal("collect returned ok after ctx ended without a message")
	}
}

// testRules are the ingest rules with the defaults, but a Kafka limit of
// 64 KiB, so fuzzed inputs can reach it.
func testRules() ingestRules {
	const maxRecord = 64 << 10
	maxPayload := maxRecord - kafkapipe.DeadLetterOverhead
	return ingestRules{dec: transcoder.New(maxPayload), maxPayload: maxPayload, maxRecord: maxRecord,
		topic: "requests", dlqTopic: "dlq", replyTopic: "payment/response/{device_id}"}
}

// message is a device message as mqttin hands it over.
func message(topic string, payload []byte, retained bool) mqttin.Message {
	return mqttin.Message{Topic: topic, DeviceID: mqttin.DeviceID(topic), Payload: payload, Retained: retained, ReceivedAt: time.Unix(1, 0)}
}

func TestAdmit(t *testing.T) {
	r := testRules()
	valid := []byte(`{"request_id":"r-1","amount_minor":100,"currency":"EUR"}`)
	longID := strings.Repeat("d", v1.MaxTopicLen-len("payment/request/"))
	tests := []struct {
		name     string
		msg      mqttin.Message
		reason   string // "" for a request
		reply    string // the reply's status, "" for none
		keep     int    // bytes of payload the dead letter carries
		clearing bool
	}{
		{name: "request", msg: message("payment/request/d1", valid, false)},
		{name: "bad amount", msg: message("payment/request/d1", []byte(`{"request_id":"r","amount_minor":-1,"currency":"EUR"}`), false),
			reason: "invalid_amount", reply: "REJECTED", keep: 53},
		{name: "over max_payload: a stub, not read", msg: message("payment/request/d1", append(bytes.Repeat([]byte(" "), 2<<20), valid...), false),
			reason: "payload_too_large", reply: "REJECTED", keep: deadLetterStub},
		{name: "retained: not processed, cleared, no reply", msg: message("payment/request/d1", valid, true),
			reason: "retained", keep: len(valid), clearing: true},
		{name: "empty: no reply", msg: message("payment/request/d1", nil, false), reason: "empty_payload"},
		{name: "device id too long for a reply topic: no reply", msg: message("payment/request/"+longID, valid, false),
			reason: "invalid_device_id", keep: len(valid)},
		{name: "device id with a control character: no reply", msg: message("payment/request/d\x01", valid, false),
			reason: "invalid_device_id", keep: len(valid)},
		{name: "device id too long but a valid reply topic: answered", msg: message("payment/request/"+strings.Repeat("d", 200), valid, false),
			reason: "invalid_device_id", reply: "REJECTED", keep: len(valid)},
		{name: "topic too long for an envelope", msg: message("site/"+strings.Repeat("s", 64<<10-200)+"/d1", valid, false),
			reason: "kafka_record_too_large", reply: "REJECTED", keep: len(valid)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := r.admit(tc.msg, nil)
			checkAdmission(t, r, tc.msg, a)
			if tc.reason == "" {
				if a.dead != nil || a.rec.Topic != "requests" || a.reply != nil || a.replyTopic != "payment/response/d1" {
					t.Fatalf("got %+v, want a request to the request topic", a.dead)
				}
				return
			}
			if a.dead == nil || a.dead.Reason != tc.reason {
				t.Fatalf("got dead letter %+v, want reason %s", a.dead, tc.reason)
			}
			if len(a.rec.Value) != tc.keep {
				t.Errorf("dead letter carries %d bytes, want %d", len(a.rec.Value), tc.keep)
			}
			if got := string(kafkapipe.Header(a.rec.Headers, kafkapipe.HeaderOriginalSize)); got != strconv.Itoa(len(tc.msg.Payload)) {
				t.Errorf("original size header %q, want %d", got, len(tc.msg.Payload))
			}
			if tc.reply == "" && (a.reply != nil || a.replyTopic != "") {
				t.Errorf("got reply %q to %.40q, want none", a.reply, a.replyTopic)
			}
			if tc.reply != "" {
				rep, err := transcoder.DecodeReply(a.reply)
				if err != nil || rep.Status != tc.reply {
					t.Errorf("got reply %q, want status %s", a.reply, tc.reply)
				}
			}
			if (a.clear != "") != tc.clearing {
				t.Errorf("got clear %q, want clearing %v", a.clear, tc.clearing)
			}
		})
	}
}

// A record Kafka refuses for good becomes a stub dead letter answered
// REJECTED with the request id; a refused dead letter is cut to a stub.
func TestRefused(t *testing.T) {
	r := testRules()
	msg := message("payment/request/d1", []byte(`{"request_id":"r-9","amount_minor":100,"currency":"EUR","memo":"`+strings.Repeat("m", 10000)+`"}`), false)
	a := r.admit(msg, nil)
	a.refused(r, msg, fmt.Errorf("wrapped: %w", kafka.MessageSizeTooLarge))
	if a.dead == nil || a.dead.Reason != "kafka_record_too_large" || len(a.rec.Value) != deadLetterStub || a.rec.Topic != "dlq" {
		t.Fatalf("got %+v with %d bytes, want a %d-byte stub with reason kafka_record_too_large", a.dead, len(a.rec.Value), deadLetterStub)
	}
	rep, _ := transcoder.DecodeReply(a.reply)
	if rep.Status != "REJECTED" || rep.RequestID != "r-9" || rep.Code != "internal" {
		t.Fatalf("got reply %+v, want REJECTED for r-9 with code internal", rep)
	}

	bad := message("payment/request/d1", []byte(`{"request_id":"r-10","amount_minor":-1,"currency":"EUR","memo":"`+strings.Repeat("m", 10000)+`"}`), false)
	d := r.admit(bad, nil)
	if len(d.rec.Value) != len(bad.Payload) {
		t.Fatalf("dead letter within max_payload carries %d bytes, want all %d", len(d.rec.Value), len(bad.Payload))
	}
	d.refused(r, bad, kafka.MessageSizeTooLarge)
	if len(d.rec.Value) != deadLetterStub || d.dead.Reason != "invalid_amount" || string(kafkapipe.Header(d.rec.Headers, kafkapipe.HeaderTruncated)) != "true" {
		t.Fatalf("refused dead letter: got %d bytes, reason %s, want a stub keeping its reason", len(d.rec.Value), d.dead.Reason)
	}
}

// checkAdmission asserts the invariants of every decision: the record fits
// Kafka's limit, a request is a valid envelope, a reply goes only to a
// topic a broker accepts, and only a retained message is cleared.
func checkAdmission(t *testing.T, r ingestRules, m mqttin.Message, a admission) {
	t.Helper()
	if size := a.rec.Size(); size > r.maxRecord {
		t.Fatalf("record of %d bytes, Kafka's limit is %d", size, r.maxRecord)
	}
	switch {
	case a.dead == nil:
		env := &v1.Envelope{}
		if a.rec.Topic != r.topic || proto.Unmarshal(a.rec.Value, env) != nil {
			t.Fatalf("request record to %q is not an envelope", a.rec.Topic)
		}
		if err := v1.CheckEnvelope(env); err != nil {
			t.Fatalf("request envelope breaks the contract: %v", err)
		}
	case a.rec.Topic != r.dlqTopic || a.dead.Reason == "":
		t.Fatalf("dead letter to %q with reason %q", a.rec.Topic, a.dead.Reason)
	}
	if a.replyTopic != "" {
		if err := mqttin.ValidTopic(a.replyTopic); err != nil {
			t.Fatalf("reply topic %.60q: %v", a.replyTopic, err)
		}
	}
	if a.clear != "" && (!m.Retained || a.clear != m.Topic) {
		t.Fatalf("clears %.60q for a message that was not retained there", a.clear)
	}
}

// FuzzAdmit: whatever topic and payload a device sends, the ingest decision
// never panics, every record fits Kafka's limit (also after Kafka refuses
// it), every reply topic is publishable, and a request is a valid envelope.
func FuzzAdmit(f *testing.F) {
	f.Add("payment/request/d1", []byte(`{"request_id":"r-1","amount_minor":1250,"currency":"EUR","merchant_id":"m-1"}`), false)
	f.Add("payment/request/d1", []byte(`{"request_id":"r-\ud800","amount_minor":1,"currency":"EUR"}`), false)
	f.Add("payment/request/d\xff", []byte(`{}`), false)
	f.Add("payment/request/"+strings.Repeat("é", 40), []byte("\x0a\x01r\x10\x05\x1a\x03EUR"), true)
	f.Add("a/"+strings.Repeat("x", 65000)+"/d", []byte(`{"request_id":"r","amount_minor":1,"currency":"EUR"}`), false)
	f.Add("payment/request/d", bytes.Repeat([]byte("x"), 60000), false)
	r := testRules()
	f.Fuzz(func(t *testing.T, topic string, payload []byte, retained bool) {
		m := message(topic, payload, retained)
		a := r.admit(m, nil)
		checkAdmission(t, r, m, a)
		a.refused(r, m, kafka.MessageSizeTooLarge)
		checkAdmission(t, r, m, a)
	})
}
