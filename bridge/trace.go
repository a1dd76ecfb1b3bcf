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
	ctxs  []context.Context
	spans []trace.Span
}

func (t traces) receiving(n int) *receiveSpans {
	if !t.on {
		return &receiveSpans{t: t}
	}
	return &receiveSpans{t: t, ctxs: make([]context.Context, n), spans: make([]trace.Span, n)}
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
			trace.WithSpanKind(trace.SpanKindConsumer), trace.WithTimestamp(m.ReceivedAt),
			trace.WithAttributes(attribute.String("messaging.system", "mqtt"), attribute.String("messaging.destination.name", m.Topic),
				attribute.String("edgebridge.device_id", m.DeviceID)))
		s.ctxs[i], s.spans[i] = ctx, span
		return tracing.Inject(ctx, maps.Clone(device))
	}
}

// producing starts a "kafka produce" span for each pending record (a
// request or its dead letter).
func (s *receiveSpans) producing(pending []int, adms []admission) produceSpans {
	if !s.t.on {
		return nil
	}
	out := make(produceSpans, 0, len(pending))
	for _, i := range pending {
		if s.ctxs[i] == nil {
			continue
		}
		attrs := []attribute.KeyValue{attribute.String("messaging.system", "kafka"), attribute.String("messaging.destination.name", adms[i].rec.Topic)}
		if d := adms[i].dead; d != nil {
			attrs = append(attrs, attribute.String("edgebridge.dlq_reason", d.Reason))
		}
		_, span := s.t.tracer.Start(s.ctxs[i], "kafka produce", trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
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
	if !s.t.on || s.ctxs[i] == nil {
		return noopSpan
	}
	_, span := s.t.tracer.Start(s.ctxs[i], "mqtt reply", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.destination.name", topic)))
	return span
}

// end ends every receive span: the messages were PUBACKed (or the batch
// was abandoned at shutdown).
func (s *receiveSpans) end() {
	for _, span := range s.spans {
		if span != nil {
			span.End()
		}
	}
}

var noopSpan = trace.SpanFromContext(context.Background())

// consuming starts r's "kafka consume" span under the trace its envelope
// carries; it ends when r is settled.
func (t traces) consuming(r *settle.Record) {
	if !t.on {
		return
	}
	_, r.Span = t.tracer.Start(tracing.Extract(context.Background(), r.Envelope.GetTraceContext()), "kafka consume",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), attribute.String("messaging.destination.name", r.Source),
			attribute.Int("messaging.kafka.destination.partition", int(r.Partition)), attribute.Int64("messaging.kafka.message.offset", r.Offset),
			attribute.String("edgebridge.message_id", r.Envelope.GetMessageId())))
}

// delivering starts the "deliver" span of r's current attempt and puts its
// context in the envelope, so the backend's span is its child.
func (t traces) delivering(r *settle.Record) trace.Span {
	if !t.on || r.Span == nil {
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
	if !t.on || r.Span == nil {
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
	r.Span.SetAttributes(attribute.String("edgebridge.settled", d.Action.String()), attribute.String("edgebridge.attempts", strconv.Itoa(r.Attempt)))
	if d.Action == settle.DeadLetter {
		r.Span.SetAttributes(attribute.String("edgebridge.dlq_reason", d.Reason))
	}
	r.Span.End()
}
