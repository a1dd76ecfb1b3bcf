// Package tracing follows one device request across every hop with
// OpenTelemetry. A request's trace starts from the device's W3C
// traceparent (or a new root) when the bridge receives it over MQTT; its
// context then travels with the request itself, not with a connection:
// in the envelope's trace_context (which Kafka stores and backends and
// Dapr apps receive) and in the Kafka record's traceparent header. One
// long-lived gRPC stream carries many traces, so stream metadata cannot.
//
// Spans (all of one request share its trace id):
//
//	mqtt receive        the bridge took the device's message
//	kafka produce       the request (or its dead letter) written to Kafka, acks=all
//	kafka consume       the record read back for the backends, until it is settled
//	deliver             one delivery attempt to a backend, send to ACK (attempt, resends)
//	backend process     the backend helper handling it (dedup, handler, durable store)
//	dead letter         a dead letter written to Kafka
//	mqtt reply          the reply published to the device, until its PUBACK
//
// Setup installs an OTLP/gRPC exporter; without an endpoint the tracer
// provider is a no-op and every function here costs a few nanoseconds.
package tracing

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/credentials"
)

// Config configures the exporter.
type Config struct {
	// Endpoint is the OTLP/gRPC collector, host:port; "" turns tracing off.
	Endpoint string
	// SampleRatio of new traces recorded, 0-1; a request whose device sent
	// a sampled traceparent follows the device's decision. Default: 1.
	SampleRatio float64
	// TLS to the collector; nil: plaintext.
	TLS *tls.Config
	// Service is the service.name resource attribute. Required.
	Service string
	// Version is the service.version resource attribute.
	Version string
}

// Setup returns the tracer provider Config describes and the function that
// flushes and stops it (bounded by ctx). It does no network I/O: the
// exporter connects in the background and drops spans it cannot send.
func Setup(cfg Config) (trace.TracerProvider, func(context.Context) error, error) {
	if cfg.Endpoint == "" {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	if cfg.Service == "" {
		return nil, nil, errors.New("tracing: service name required")
	}
	ratio := cfg.SampleRatio
	if ratio <= 0 || ratio > 1 {
		ratio = 1
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.Endpoint), otlptracegrpc.WithTimeout(5 * time.Second)}
	if cfg.TLS != nil {
		opts = append(opts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(cfg.TLS)))
	} else {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(context.Background(), opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: exporter: %w", err)
	}
	res := resource.NewSchemaless(attribute.String("service.name", cfg.Service), attribute.String("service.version", cfg.Version))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
	)
	return tp, tp.Shutdown, nil
}

// Tracer is the instrumentation scope of edgebridge's spans.
const Tracer = "github.com/edgebridge/edgebridge"

// propagator reads and writes W3C traceparent and tracestate.
var propagator = propagation.TraceContext{}

// Extract returns ctx with the remote span context carried in carrier
// (traceparent, tracestate), if any.
func Extract(ctx context.Context, carrier map[string]string) context.Context {
	if len(carrier) == 0 {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier(carrier))
}

// NotSampled reports whether carrier holds a valid version-00 W3C
// traceparent whose sampled flag is off. The sampler is parent-based
// (Setup), so no span of such a request is recorded: a caller can skip
// making one, which costs an unsampled request a few allocations and a
// microsecond at every hop. It reads the header in place and allocates
// nothing; for any other header it says false (the caller then makes its
// span as usual).
func NotSampled(carrier map[string]string) bool {
	tp := carrier["traceparent"]
	// "00-" 32 hex trace id "-" 16 hex span id "-" flags 00-03
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' || tp[53] != '0' {
		return false
	}
	if !lowerHex(tp[3:35]) || !lowerHex(tp[36:52]) {
		return false
	}
	if tp[3:35] == "00000000000000000000000000000000" || tp[36:52] == "0000000000000000" {
		return false // invalid ids
	}
	return tp[54] == '0' || tp[54] == '2' // 1 and 3 are sampled; higher flags are invalid in version 00
}

// lowerHex reports whether s is lowercase hexadecimal digits only.
func lowerHex(s string) bool {
	ok := true
	for i := range len(s) {
		ok = ok && isLowerHex[s[i]]
	}
	return ok
}

// isLowerHex is a lookup table: one load a byte, no branches to mispredict.
var isLowerHex = func() (t [256]bool) {
	for _, c := range "0123456789abcdef" {
		t[c] = true
	}
	return t
}()

// Inject writes the span context of ctx into carrier, replacing what it
// held; a carrier of a context without a valid span is left alone. It
// returns carrier (a new map if carrier was nil and there is something to
// write).
func Inject(ctx context.Context, carrier map[string]string) map[string]string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return carrier
	}
	if carrier == nil {
		carrier = make(map[string]string, 2)
	}
	delete(carrier, "tracestate")
	propagator.Inject(ctx, propagation.MapCarrier(carrier))
	return carrier
}
