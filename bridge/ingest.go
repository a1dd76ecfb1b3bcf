package bridge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/transcoder"
)

// ingestBatch is the most MQTT messages written to Kafka in one produce.
const ingestBatch = 512

// deadLetterStub is how much of a payload a dead letter keeps when the
// payload is larger than mqtt.max_payload or Kafka refused it: enough to see
// what it was, never enough to be refused for its size.
const deadLetterStub = 4 << 10

// DLQ reasons the ingest gives besides the transcoder's.
const (
	reasonRetained     = "retained"      // delivered from the broker's retained store
	reasonEmpty        = "empty_payload" // MQTT's "delete the retained message" (the bridge's own clears, too)
	reasonEncodeFailed = "encode_failed"
)

// envelopeContentType is the content-type header of request records.
var envelopeContentType = []byte(kafkapipe.ContentTypeEnvelope)

// admission is what the bridge does with one device message: the record it
// writes to Kafka (the request's envelope or a dead letter), then the reply
// it publishes and the retained message it clears, then the PUBACK.
type admission struct {
	rec kafkapipe.Record
	// dead is the dead letter rec was built from; nil for a request.
	dead *kafkapipe.DeadLetter

	replyTopic string // "" when the message gets no reply
	reply      []byte
	clear      string // a retained message to clear after the write
	requestID  string // of a request, for a REJECTED reply if Kafka refuses it
}

// ingestRules decide what happens to device messages. Deciding does no
// I/O, so the whole decision is fuzzed (FuzzAdmit).
type ingestRules struct {
	dec        *transcoder.Decoder
	maxPayload int
	maxRecord  int    // kafka.max_message_bytes
	topic      string // kafka.topic
	dlqTopic   string
	replyTopic string // mqtt.reply_topic, with {device_id}
}

// admit decides what to do with m. Every message is written somewhere:
// a valid request as an envelope to the request topic, anything else as a
// dead letter to the DLQ topic. A rejected request is answered REJECTED
// unless its device id cannot form a valid reply topic; a retained or
// empty message is not answered.
//
// traced, if not nil, is given the device's trace context (of a valid
// request, or read from an invalid one's JSON) and returns the context the
// request carries on: the bridge's receive span.
func (r ingestRules) admit(m mqttin.Message, traced func(device map[string]string) map[string]string) admission {
	replyTopic := mqttin.ReplyTopic(r.replyTopic, m.DeviceID)
	topicErr := mqttin.ValidTopic(replyTopic)
	dead := func(reason, detail string) admission {
		dl := &kafkapipe.DeadLetter{Topic: r.dlqTopic, DeviceID: m.DeviceID, Source: m.Topic,
			Payload: m.Payload, Reason: reason, Detail: detail}
		if len(m.Payload) > r.maxPayload {
			dl.Keep = deadLetterStub
		}
		if traced != nil {
			traced(transcoder.TraceOf(m.Payload))
		}
		return admission{rec: dl.Record(), dead: dl}
	}
	switch {
	case m.Retained:
		// A retained request is an old one replayed on every subscribe:
		// never processed, cleared so the next subscribe does not see it.
		a := dead(reasonRetained, "delivered from the broker's retained store; not processed")
		a.clear = m.Topic
		return a
	case len(m.Payload) == 0:
		return dead(reasonEmpty, "a zero-length message is not a request")
	}

	env, err := r.dec.Decode(transcoder.Input{DeviceID: m.DeviceID, Topic: m.Topic, Payload: m.Payload, ReceivedAt: m.ReceivedAt})
	if err == nil && topicErr != nil {
		err = &transcoder.Error{Reason: transcoder.ReasonBadDeviceID, Detail: "no valid reply topic: " + topicErr.Error(), RequestID: env.GetRequestId()}
	}
	var value []byte
	if err == nil {
		if traced != nil {
			env.TraceContext = traced(env.TraceContext)
		}
		if value, err = proto.Marshal(env); err != nil {
			err = &transcoder.Error{Reason: reasonEncodeFailed, Detail: err.Error(), RequestID: env.GetRequestId()}
		}
	}
	if err != nil {
		var te *transcoder.Error
		if !errors.As(err, &te) {
			te = &transcoder.Error{Reason: reasonEncodeFailed, Detail: err.Error()}
		}
		a := dead(string(te.Reason), err.Error())
		if topicErr == nil {
			a.replyTopic = replyTopic
			messageID := ""
			if te.RequestID != "" {
				messageID = v1.MessageID(m.DeviceID, te.RequestID)
			}
			a.reply = transcoder.RejectReply(te.RequestID, messageID, te.Reason, te.Detail)
		}
		return a
	}
	deviceID := []byte(env.DeviceId) // the key and a header, both read only
	a := admission{rec: kafkapipe.Record{
		Topic: r.topic,
		Key:   deviceID,
		Value: value,
		Headers: []kafka.Header{
			{Key: kafkapipe.HeaderMessageID, Value: []byte(env.MessageId)},
			{Key: kafkapipe.HeaderDeviceID, Value: deviceID},
			{Key: kafkapipe.HeaderContentType, Value: envelopeContentType},
		},
	}, replyTopic: replyTopic, requestID: env.RequestId}
	if tp := env.TraceContext["traceparent"]; tp != "" {
		a.rec.Headers = append(a.rec.Headers, kafka.Header{Key: kafkapipe.HeaderTraceParent, Value: []byte(tp)})
	}
	if size := a.rec.Size(); size > r.maxRecord {
		// A long source topic can do it: refuse it here rather than send
		// what Kafka would refuse.
		a.refused(r, m, fmt.Errorf("envelope of %d bytes, kafka.max_message_bytes %d: %w", size, r.maxRecord, kafka.MessageSizeTooLarge))
	}
	return a
}

// refused turns a record Kafka refused for good into a dead letter of its
// payload's first bytes, answered REJECTED; a dead letter Kafka refused is
// cut to those first bytes too. The reason names Kafka's refusal
// (kafka_record_too_large, kafka_not_authorized, …).
func (a *admission) refused(r ingestRules, m mqttin.Message, err error) {
	reason := kafkapipe.RefusalReason(err)
	if a.dead != nil {
		a.dead = cutToStub(a.dead, err)
		a.rec = a.dead.Record()
		return
	}
	dl := &kafkapipe.DeadLetter{Topic: r.dlqTopic, DeviceID: m.DeviceID, Source: m.Topic, Payload: m.Payload,
		Reason: reason, Detail: err.Error(), Keep: deadLetterStub}
	a.dead, a.rec = dl, dl.Record()
	a.reply = transcoder.EncodeReply(&v1.PaymentReply{
		RequestId: a.requestID, MessageId: v1.MessageID(m.DeviceID, a.requestID),
		Status: v1.PaymentStatus_PAYMENT_STATUS_REJECTED, Code: v1.ReasonCode_REASON_CODE_INTERNAL,
		Reason: reason + ": the bridge could not store the request",
	})
}

// cutToStub is dl keeping only the payload's first bytes, after Kafka
// refused the whole dead letter with err: the ingest's dead letters and the
// finisher's share it.
func cutToStub(dl *kafkapipe.DeadLetter, err error) *kafkapipe.DeadLetter {
	if dl.Keep == deadLetterStub {
		return dl
	}
	cut := *dl
	cut.Keep = deadLetterStub
	cut.Detail = fmt.Sprintf("%s; kafka refused the whole dead letter: %v", dl.Detail, err)
	return &cut
}

// ingest takes MQTT messages in arrival order, writes them to Kafka in
// batches and PUBACKs each only after its write was acknowledged (and, for
// a rejected message, after its DLQ record and its REJECTED reply). A batch
// is what arrived while the previous write was in flight, up to
// ingestBatch; with kafka.batch_timeout set, ingest also waits that long
// for more.
func (b *Bridge) ingest(ctx context.Context) error {
	var local <-chan mqttin.Message // nil: never ready
	if b.intake != nil {
		defer b.intake.Close() // devices still waiting are refused at once
		local = b.intake.Messages()
	}
	batch := make([]mqttin.Message, 0, ingestBatch)
	for {
		if !b.awaitDisk(ctx) {
			return nil
		}
		var ok bool
		batch, ok = collect(ctx, b.mqtt.Messages(), local, batch[:0], ingestBatch, b.cfg.Kafka.BatchTimeout)
		if !ok {
			return nil
		}
		// A request its broker stopped waiting for was not PUBACKed: its
		// device sends it again, so it is not written.
		batch = slices.DeleteFunc(batch, func(m mqttin.Message) bool { return !m.Claim() })
		if len(batch) == 0 {
			continue
		}
		if !b.writeBatch(ctx, batch) {
			return nil // stopping; the broker redelivers what was not acknowledged
		}
	}
}

// collect waits for a first message from a or b, then appends what else
// they hold, up to limit; with linger > 0 it waits that long for more. It
// returns false if ctx ended before the first message. A nil channel is
// never ready.
func collect[T any](ctx context.Context, a, b <-chan T, batch []T, limit int, linger time.Duration) ([]T, bool) {
	select {
	case m := <-a:
		batch = append(batch, m)
	case m := <-b:
		batch = append(batch, m)
	case <-ctx.Done():
		return batch, false
	}
	var expired <-chan time.Time
	if linger > 0 {
		t := time.NewTimer(linger)
		defer t.Stop()
		expired = t.C
	}
	for len(batch) < limit {
		select {
		case m := <-a:
			batch = append(batch, m)
			continue
		case m := <-b:
			batch = append(batch, m)
			continue
		default:
		}
		if expired == nil {
			break
		}
		select {
		case m := <-a:
			batch = append(batch, m)
		case m := <-b:
			batch = append(batch, m)
		case <-expired:
			return batch, true
		case <-ctx.Done():
			return batch, true
		}
	}
	return batch, true
}

// writeBatch writes the batch's records, then publishes their replies and
// clears retained requests, then PUBACKs every message. A record Kafka
// refuses for good becomes a dead letter (see refused); only records that
// failed are written again, so none Kafka acknowledged is written twice.
// It returns false when ctx ended first: then nothing was PUBACKed.
func (b *Bridge) writeBatch(ctx context.Context, batch []mqttin.Message) bool {
	adms := make([]admission, len(batch))
	pending := make([]int, len(batch)) // indexes of records not yet written
	spans := b.traces.receiving(len(batch))
	defer spans.end()
	for i, m := range batch {
		b.metrics.Received.Inc()
		adms[i] = b.rules.admit(m, spans.admit(i, m))
		pending[i] = i
		if d := adms[i].dead; d != nil {
			b.log.Info("bridge: rejected device message", "device_id", transcoder.Clip(m.DeviceID, 64),
				"topic", transcoder.Clip(m.Topic, 128), "reason", d.Reason, "bytes", len(m.Payload))
		}
	}
	recs := make([]kafkapipe.Record, 0, len(batch))
	// The write runs under a context that outlives ctx, so a write in
	// progress at shutdown completes and its messages are acknowledged.
	write := func() error {
		recs = recs[:0]
		for _, i := range pending {
			recs = append(recs, adms[i].rec)
		}
		start := time.Now()
		produce := spans.producing(pending, adms)
		errs := b.producer.Produce(context.WithoutCancel(ctx), recs)
		b.metrics.Produce.Observe(time.Since(start).Seconds())
		produce.end(errs)
		var first error
		unreachable := false
		left := pending[:0]
		for k, i := range pending {
			err := errs[k]
			if err == nil {
				b.metrics.Produced.Inc()
				continue
			}
			first = cmp.Or(first, err)
			// A dead letter refused even as a stub (a DLQ topic the bridge
			// may not write) stalls intake until an operator fixes it.
			stub := adms[i].dead != nil && adms[i].dead.Keep == deadLetterStub
			if kafkapipe.IsRetryable(err) || stub {
				unreachable = true
			}
			if !kafkapipe.IsRetryable(err) {
				b.log.Warn("bridge: kafka refused a record; dead-lettering it", "device_id", transcoder.Clip(batch[i].DeviceID, 64),
					"topic", recs[k].Topic, "err", err)
				adms[i].refused(b.rules, batch[i], err)
			}
			left = append(left, i)
		}
		pending = left
		if first != nil {
			b.metrics.ProduceErrors.Inc()
			// A refusal is Kafka answering: the records become dead
			// letters at once, the bridge stays ready.
			if unreachable {
				b.stalled.Store(b.noteKafka(first))
			} else {
				b.kafkaOK.Store(true)
			}
			return fmt.Errorf("%d of %d records: %w", len(pending), len(recs), first)
		}
		return nil
	}
	if !b.retry(ctx, "kafka write", write) {
		return false // stopping: nothing was PUBACKed, the broker redelivers
	}
	b.noteKafka(nil)
	b.stalled.Store(nil)
	// The device hears REJECTED before its message is PUBACKed, so a crash
	// in between redelivers the message and the reply is sent again.
	for i, a := range adms {
		if a.dead != nil {
			b.metrics.DLQ.WithLabelValues(a.dead.Reason).Inc()
		}
		if len(a.reply) > 0 {
			span := spans.replying(i, a.replyTopic)
			ok := b.reply(ctx, a.replyTopic, a.reply)
			span.End()
			if !ok {
				return false
			}
		}
		if a.clear != "" && !b.publish(ctx, "clear retained", a.clear, func() error { return b.mqtt.ClearRetained(ctx, a.clear) }) {
			return false
		}
	}
	for _, m := range batch {
		m.Ack()
	}
	return true
}

// reply publishes a reply to a device; see publish.
func (b *Bridge) reply(ctx context.Context, topic string, payload []byte) bool {
	return b.retry(ctx, "reply", func() error { return b.publishReply(ctx, topic, payload) })
}

// publish retries an MQTT publish until it succeeds or ctx ends (false).
func (b *Bridge) publish(ctx context.Context, what, topic string, fn func() error) bool {
	return b.retry(ctx, what, func() error { return b.publishOnce(ctx, what, topic, fn) })
}
