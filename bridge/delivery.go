package bridge

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/internal/schedule"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/settle"
	"github.com/edgebridge/edgebridge/transcoder"
)

// ReasonCorruptEnvelope is the DLQ reason of a record on the requests
// topic that is not an envelope.
const ReasonCorruptEnvelope = v1.ReasonCorruptEnvelope

// handleRecord is the consumer's Handler: the record is already in the
// window; send it to the backend that owns its partition.
func (b *Bridge) handleRecord(ctx context.Context, m kafkapipe.Message) error {
	r := &settle.Record{Partition: m.Partition, Offset: m.Offset, First: time.Now()}
	env := &v1.Envelope{}
	if err := proto.Unmarshal(m.Value, env); err != nil || env.GetMessageId() == "" {
		// Not an envelope (someone else wrote to the topic): dead-letter it
		// rather than block the partition.
		r.DeviceID, r.Source, r.Payload = string(m.Key), m.Topic, m.Value
		b.settler.DeadLetter(r, ReasonCorruptEnvelope, "record is not an edgebridge.v1.Envelope")
		return nil
	}
	r.Envelope, r.DeviceID, r.Source = env, env.GetDeviceId(), env.GetSourceTopic()
	r.ReplyTopic = mqttin.ReplyTopic(b.cfg.MQTT.ReplyTopic, env.GetDeviceId())
	b.traces.consuming(r)
	b.deliver(r, b.deadline(m, env))
	return nil
}

// deadline is when the request in m may no longer be sent to a backend for
// the first time (backend.max_request_age): zero when it never expires —
// no max age, no receipt time, or a backend may have seen it already (an
// earlier run may have sent it).
func (b *Bridge) deadline(m kafkapipe.Message, env *v1.Envelope) time.Time {
	maxAge, at := b.cfg.Backend.MaxRequestAge, env.GetReceivedAtUnixNano()
	if maxAge <= 0 || at <= 0 || m.Redelivered {
		return time.Time{}
	}
	return time.Unix(0, at).Add(maxAge)
}

// deliver hands r to the backend pool; a request no stream sent by
// deadline (non-zero) expires instead. The ACK callback runs on a stream's
// receiving goroutine; Settle never blocks.
func (b *Bridge) deliver(r *settle.Record, deadline time.Time) {
	r.Attempt++
	if r.Attempt > 1 {
		// The stream that sent the last attempt may still read that
		// envelope (its stats handler runs after the ACK can arrive: a data
		// race the race detector caught): this attempt gets its own.
		r.Envelope = proto.CloneOf(r.Envelope)
	}
	r.Envelope.Attempt = uint32(r.Attempt)
	span := b.traces.delivering(r)
	b.pool.DeliverBy(r.Partition, r.Envelope, deadline, func(ack *v1.Ack) error {
		if ack == nil { // expired: no backend saw it
			d := b.settler.Expire(r, b.cfg.Backend.MaxRequestAge)
			ended(span, errors.New(d.Detail))
			return nil
		}
		d := b.settler.Settle(r, settle.FromAck(ack))
		acked(span, ack, d)
		if d.Action != settle.Redeliver {
			b.metrics.Latency.Observe(time.Since(r.First).Seconds())
		}
		if d.Problem == settle.ProblemInvalidReply {
			return errors.New(d.Detail) // the pool counts and logs it
		}
		return nil
	})
}

// sink is the bridge's side of its Settler.
type sink struct{ b *Bridge }

// Redeliver sends r again (after a RETRY): a backend saw it, so it never
// expires.
func (s sink) Redeliver(_ context.Context, r *settle.Record) error {
	s.b.deliver(r, time.Time{})
	return nil
}

// WriteDeadLetter writes dl; if Kafka refuses it for good, only the
// payload's first bytes are written on the next attempt.
func (s sink) WriteDeadLetter(ctx context.Context, r *settle.Record, dl *kafkapipe.DeadLetter) error {
	span := s.b.traces.child(r, "dead letter", trace.SpanKindProducer, attribute.String("edgebridge.dlq_reason", dl.Reason))
	err := s.b.producer.Write(ctx, dl.Record())
	if err != nil && !kafkapipe.IsRetryable(err) {
		*dl = *cutToStub(dl, err)
	}
	ended(span, err)
	return err
}

// Reply publishes r's reply; once the broker acknowledged it, the
// request's end-to-end latency (MQTT receipt to reply PUBACK) is known.
func (s sink) Reply(ctx context.Context, r *settle.Record, payload []byte) error {
	span := s.b.traces.child(r, "mqtt reply", trace.SpanKindProducer, attribute.String("messaging.destination.name", r.ReplyTopic))
	err := s.b.publishReply(ctx, r.ReplyTopic, payload)
	ended(span, err)
	if err == nil && r.Envelope.GetReceivedAtUnixNano() > 0 {
		s.b.metrics.EndToEnd.Observe(time.Since(time.Unix(0, r.Envelope.GetReceivedAtUnixNano())).Seconds())
	}
	return err
}

// publishReply makes one attempt to publish a device reply: inside the
// embedded broker when its intake publishes replies, else over the
// bridge's MQTT connection.
func (b *Bridge) publishReply(ctx context.Context, topic string, payload []byte) error {
	return b.publishOnce(ctx, "reply", topic, func() error {
		var err error
		if b.intake != nil && b.intake.CanReply() {
			err = b.intake.Reply(topic, payload)
		} else {
			err = b.mqtt.Publish(ctx, topic, payload)
		}
		if err == nil {
			b.metrics.Replies.Inc()
		}
		return err
	})
}

func (s sink) Settled(r *settle.Record, d settle.Decision) {
	settledSpan(r, d)
	if d.Action == settle.DeadLetter {
		s.b.metrics.DLQ.WithLabelValues(d.Reason).Inc()
	}
	s.b.win.Ack(r.Partition, r.Offset)
}

// A failure is logged when it first happens and when its cause changes,
// not at every attempt (a refused login fails the same way for hours);
// recovery after a failure is logged too.
func (b *Bridge) retry(ctx context.Context, what string, fn func() error) bool {
	return schedule.RetryLogged(ctx, b.log, "bridge: "+what, fn)
}

// publishOnce makes one MQTT publish. A topic no broker accepts is given
// up at once (nil): sending it again would only get the bridge
// disconnected.
func (b *Bridge) publishOnce(ctx context.Context, what, topic string, fn func() error) error {
	err := fn()
	if errors.Is(err, mqttin.ErrInvalidTopic) {
		b.metrics.InvalidTopics.Inc()
		b.log.Error("bridge: not publishing to an invalid topic", "what", what, "topic", transcoder.Clip(topic, 128), "err", err)
		return nil
	}
	return err
}
