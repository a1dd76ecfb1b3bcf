package bridge

import (
	"context"
	"maps"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/settle"
	"github.com/edgebridge/edgebridge/tracing"
)

// traces makes the bridge's spans (see package tracing for the list).
// With tracing off (no tracer provider) every method is a no-op that
// allocates nothing.
type traces struct {
	on     bool
	tracer trace.Tracer
}

func newTraces(tp trace.TracerProvider) traces {
	if tp == nil {
		return traces{tracer: noop.NewTracerProvider().Tracer(tracing.Tracer)}
	}
	_, isNoop := tp.(noop.TracerProvider)
	return traces{on: !isNoop, tracer: tp.Tracer(tracing.Tracer)}
}

// receiveSpans are the "mqtt receive" spans of one ingest batch.
type receiveSpans struct {
	t     traces
	slots []receiveSlot // one a message of the batch
}

// receiveSlot is one message's receive span and its context; empty for a
// message not traced.
type receiveSlot struct {
	ctx  context.Context
	span trace.Span
}

func (t traces) receiving(n int) *receiveSpans {
	if !t.on {
		return &receiveSpans{t: t}
	}
	return &receiveSpans{t: t, slots: make([]receiveSlot, n)}
}

// admit returns the trace hook of message i for ingestRules.admit: it
// starts the message's receive span under the device's trace context and
// returns the context the request carries on. nil when tracing is off.
func (s *receiveSpans) admit(i int, m mqttin.Message) func(map[string]string) map[string]string {
	if !s.t.on {
		return nil
	}
	return func(device map[string]string) map[string]string {
		ctx, span := s.t.tracer.Start(tracing.Extract(context.Background(), device), "mqtt receive",
			consumerKind, trace.WithTimestamp(m.ReceivedAt))
		if span.IsRecording() { // sampled: an unsampled request pays for no attribute
			span.SetAttributes(attribute.String("messaging.system", "mqtt"), attribute.String("messaging.destination.name", m.Topic),
				attribute.String("edgebridge.device_id", m.DeviceID))
		}
		s.slots[i] = receiveSlot{ctx, span}
		return tracing.Inject(ctx, maps.Clone(device))
	}
}

// The span kinds, made once: an option made at each call is an allocation.
var (
	consumerKind = trace.WithSpanKind(trace.SpanKindConsumer)
	producerKind = trace.WithSpanKind(trace.SpanKindProducer)
)

// producing starts a "kafka produce" span for each pending record (a
// request or its dead letter).
func (s *receiveSpans) producing(pending []int, adms []admission) produceSpans {
	if !s.t.on {
		return nil
	}
	var out produceSpans
	for _, i := range pending {
		// The sampler is parent-based (tracing.Setup): the child of a
		// request not sampled is not sampled either, so it is not made.
		if s.slots[i].ctx == nil || !s.slots[i].span.IsRecording() {
			continue
		}
		attrs := []attribute.KeyValue{attribute.String("messaging.system", "kafka"), attribute.String("messaging.destination.name", adms[i].rec.Topic)}
		if d := adms[i].dead; d != nil {
			attrs = append(attrs, attribute.String("edgebridge.dlq_reason", d.Reason))
		}
		_, span := s.t.tracer.Start(s.slots[i].ctx, "kafka produce", producerKind, trace.WithAttributes(attrs...))
		out = append(out, span)
	}
	return out
}

// produceSpans are one produce attempt's spans, in the order of pending.
type produceSpans []trace.Span

func (p produceSpans) end(errs []error) {
	for k, span := range p {
		if k < len(errs) && errs[k] != nil {
			span.SetStatus(codes.Error, errs[k].Error())
		}
		span.End()
	}
}

// replying starts the "mqtt reply" span of message i's REJECTED reply.
func (s *receiveSpans) replying(i int, topic string) trace.Span {
	if !s.t.on || s.slots[i].ctx == nil || !s.slots[i].span.IsRecording() {
		return noopSpan
	}
	_, span := s.t.tracer.Start(s.slots[i].ctx, "mqtt reply", producerKind,
		trace.WithAttributes(attribute.String("messaging.destination.name", topic)))
	return span
}

// end ends every receive span: the messages were PUBACKed (or the batch
// was abandoned at shutdown).
func (s *receiveSpans) end() {
	for _, sl := range s.slots {
		if sl.span != nil {
			sl.span.End()
		}
	}
}

var noopSpan = trace.SpanFromContext(context.Background())

// consuming starts r's "kafka consume" span under the trace its envelope
// carries; it ends when r is settled. A request not sampled gets none (nil):
// the sampler is parent-based, so neither it nor its children would be
// recorded, and the envelope already carries its trace on.
func (t traces) consuming(r *settle.Record) {
	if !t.on || tracing.NotSampled(r.Envelope.GetTraceContext()) {
		return
	}
	_, r.Span = t.tracer.Start(tracing.Extract(context.Background(), r.Envelope.GetTraceContext()), "kafka consume", consumerKind)
	if r.Span.IsRecording() {
		r.Span.SetAttributes(attribute.String("messaging.system", "kafka"), attribute.String("messaging.destination.name", r.Source),
			attribute.Int("messaging.kafka.destination.partition", int(r.Partition)), attribute.Int64("messaging.kafka.message.offset", r.Offset),
			attribute.String("edgebridge.message_id", r.Envelope.GetMessageId()))
	}
}

// delivering starts the "deliver" span of r's current attempt and puts its
// context in the envelope, so the backend's span is its child. A request
// not sampled keeps the context it carries (its trace, not sampled).
func (t traces) delivering(r *settle.Record) trace.Span {
	if !t.on || r.Span == nil || !r.Span.IsRecording() {
		return noopSpan
	}
	ctx, span := t.tracer.Start(trace.ContextWithSpan(context.Background(), r.Span), "deliver",
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attribute.Int("edgebridge.attempt", r.Attempt)))
	r.Envelope.TraceContext = tracing.Inject(ctx, maps.Clone(r.Envelope.GetTraceContext()))
	return span
}

// acked ends a deliver span with the backend's answer.
func acked(span trace.Span, ack *v1.Ack, d settle.Decision) {
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.String("edgebridge.outcome", ack.GetOutcome().String()), attribute.Bool("edgebridge.duplicate", ack.GetDuplicate()),
		attribute.String("edgebridge.next", d.Action.String()))
	if d.Problem != "" {
		span.SetStatus(codes.Error, d.Problem+": "+d.Detail)
	}
	span.End()
}

// child starts a span named name under r's consume span.
func (t traces) child(r *settle.Record, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) trace.Span {
	if !t.on || r.Span == nil || !r.Span.IsRecording() {
		return noopSpan
	}
	_, span := t.tracer.Start(trace.ContextWithSpan(context.Background(), r.Span), name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
	return span
}

// ended ends span, marking it failed with err.
func ended(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// settled ends r's consume span with its terminal outcome.
func settledSpan(r *settle.Record, d settle.Decision) {
	if r.Span == nil {
		return
	}
	if !r.Span.IsRecording() {
		r.Span.End()
		return
	}
	r.Span.SetAttributes(attribute.String("edgebridge.settled", d.Action.String()), attribute.String("edgebridge.attempts", strconv.Itoa(r.Attempt)))
	if d.Action == settle.DeadLetter {
		r.Span.SetAttributes(attribute.String("edgebridge.dlq_reason", d.Reason))
	}
	r.Span.End()
}
