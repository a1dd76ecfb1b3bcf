package bridge

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/grpcmetrics"
	"github.com/edgebridge/edgebridge/internal/schedule"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/transcoder"
)

// handleRecord is the consumer's Handler: the record is already in the
// window; send it to the backend that owns its partition.
func (b *Bridge) handleRecord(ctx context.Context, m kafkapipe.Message) error {
	env := &v1.Envelope{}
	if err := proto.Unmarshal(m.Value, env); err != nil || env.GetMessageId() == "" {
		// Not an envelope (someone else wrote to the topic): dead-letter it
		// rather than block the partition.
		dl := b.deadLetter(string(m.Key), m.Topic, m.Value, "corrupt_envelope", "record is not an edgebridge.v1.Envelope")
		b.enqueueFinish(ctx, finishJob{
			dlq:  dl,
			done: b.windowAck(m.Partition, m.Offset, "corrupt_envelope"),
		})
		return nil
	}
	return b.deliver(ctx, m.Partition, m.Offset, env, time.Now())
}

// deliver hands env to the backend pool; first is when the record was
// first handed over (retries keep it, for the latency metric).
func (b *Bridge) deliver(ctx context.Context, part int32, offset int64, env *v1.Envelope, first time.Time) error {
	env.Attempt++
	return b.pool.Deliver(ctx, part, env, func(ack *v1.Ack) {
		b.onAck(part, offset, env, ack, first)
	})
}

// onAck runs on a stream's receiving goroutine and must not block: the
// finish and retry channels are sized to the window, and a record is in at
// most one of them at a time.
func (b *Bridge) onAck(part int32, offset int64, env *v1.Envelope, ack *v1.Ack, first time.Time) {
	replyTopic := mqttin.ReplyTopic(b.cfg.MQTT.ReplyTopic, env.GetDeviceId())
	switch ack.GetOutcome() {
	case v1.Outcome_OUTCOME_OK, v1.Outcome_OUTCOME_DUPLICATE:
		b.metrics.Latency.Observe(time.Since(first).Seconds())
		b.finish <- finishJob{replyTopic: replyTopic, reply: ack.GetReply(), done: b.windowAck(part, offset, "")}
	case v1.Outcome_OUTCOME_REJECT:
		b.metrics.Latency.Observe(time.Since(first).Seconds())
		b.finish <- b.deadLetterJob(part, offset, env, replyTopic, ack, v1.PaymentStatus_PAYMENT_STATUS_REJECTED)
	default: // RETRY, or an outcome this bridge does not know
		if int(env.GetAttempt()) >= b.cfg.Backend.MaxAttempts {
			b.metrics.Latency.Observe(time.Since(first).Seconds())
			b.finish <- b.deadLetterJob(part, offset, env, replyTopic, ack, v1.PaymentStatus_PAYMENT_STATUS_ERROR)
			return
		}
		delay := b.cfg.Backend.RetryBackoff << min(env.GetAttempt()-1, 5)
		b.retries <- retryJob{due: time.Now().Add(delay), first: first, part: part, offset: offset, env: env}
	}
}

func (b *Bridge) deadLetterJob(part int32, offset int64, env *v1.Envelope, replyTopic string, ack *v1.Ack, status v1.PaymentStatus) finishJob {
	code := transcoder.CodeName(ack.GetCode())
	if code == "" {
		code = "backend_" + grpcmetrics.OutcomeLabel(ack.GetOutcome())
	}
	payload, _ := proto.Marshal(env)
	dl := b.deadLetter(env.GetDeviceId(), env.GetSourceTopic(), payload, code, ack.GetReason())
	reply := ack.GetReply()
	if len(reply) == 0 {
		reply = transcoder.EncodeReply(&v1.PaymentReply{
			RequestId: env.GetRequestId(), MessageId: env.GetMessageId(),
			Status: status, Code: ack.GetCode(), Reason: ack.GetReason(),
		})
	}
	return finishJob{dlq: dl, replyTopic: replyTopic, reply: reply, done: b.windowAck(part, offset, code)}
}

// deadLetter is the dead letter of a record that was delivered (or read
// from Kafka): it keeps as much of payload as a record can carry.
func (b *Bridge) deadLetter(deviceID, source string, payload []byte, reason, detail string) *kafkapipe.DeadLetter {
	return &kafkapipe.DeadLetter{Topic: b.cfg.Kafka.DLQTopic, DeviceID: deviceID, Source: source, Payload: payload,
		Reason: reason, Detail: detail, Keep: b.cfg.Kafka.MaxMessageBytes - kafkapipe.DeadLetterOverhead}
}

// writeDeadLetter writes dl, retrying until Kafka acknowledges it or ctx
// ends (false). If Kafka refuses it for good, only the payload's first
// bytes are written.
func (b *Bridge) writeDeadLetter(ctx context.Context, dl *kafkapipe.DeadLetter) bool {
	return b.retry(ctx, "dead-letter", func() error {
		err := b.producer.Write(ctx, dl.Record())
		if err != nil && !kafkapipe.IsRetryable(err) {
			dl = cutToStub(dl, err)
		}
		return err
	})
}

func (b *Bridge) windowAck(part int32, offset int64, dlqReason string) func() {
	return func() {
		if dlqReason != "" {
			b.metrics.DLQ.WithLabelValues(dlqReason).Inc()
		}
		b.win.Ack(part, offset)
	}
}

func (b *Bridge) enqueueFinish(ctx context.Context, j finishJob) {
	select {
	case b.finish <- j:
	case <-ctx.Done():
	}
}

// finisher dead-letters, replies, then acknowledges, retrying each step
// until it succeeds or the bridge stops (then the record stays uncommitted
// and is redelivered; the backend answers DUPLICATE with the stored reply).
func (b *Bridge) finisher(ctx context.Context) {
	for {
		var j finishJob
		select {
		case j = <-b.finish:
		case <-ctx.Done():
			return
		}
		if j.dlq != nil && !b.writeDeadLetter(ctx, j.dlq) {
			return
		}
		if len(j.reply) > 0 && !b.reply(ctx, j.replyTopic, j.reply) {
			return
		}
		j.done()
	}
}

// A failure is logged when it first happens and when its cause changes,
// not at every attempt (a refused login fails the same way for hours);
// recovery after a failure is logged too.
func (b *Bridge) retry(ctx context.Context, what string, fn func() error) bool {
	last := ""
	ok := schedule.Retry(ctx, fn, func(err error) {
		if msg := err.Error(); msg != last {
			last = msg
			b.log.Warn("bridge: "+what+" failed; retrying", "err", err)
		}
	})
	if ok && last != "" {
		b.log.Info("bridge: " + what + " succeeded after failures")
	}
	return ok
}

// retrier redelivers RETRY-answered envelopes when their backoff is due.
func (b *Bridge) retrier(ctx context.Context) {
	schedule.Run(ctx, b.retries, func(j retryJob) time.Time { return j.due }, func(j retryJob) bool {
		return b.deliver(ctx, j.part, j.offset, j.env, j.first) == nil
	})
}
