package tracing

import (
	"context"
	"maps"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

const deviceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestExtractInject(t *testing.T) {
	tests := []struct {
		name    string
		carrier map[string]string
		want    map[string]string // after a round trip
	}{
		{name: "nothing", carrier: nil, want: nil},
		{name: "traceparent", carrier: map[string]string{"traceparent": deviceParent}, want: map[string]string{"traceparent": deviceParent}},
		{name: "tracestate kept", carrier: map[string]string{"traceparent": deviceParent, "tracestate": "vendor=x"},
			want: map[string]string{"traceparent": deviceParent, "tracestate": "vendor=x"}},
		{name: "malformed traceparent", carrier: map[string]string{"traceparent": "00-zz"}, want: map[string]string{"traceparent": "00-zz"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := Extract(context.Background(), tc.carrier)
			got := Inject(ctx, maps.Clone(tc.carrier))
			if !maps.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	// A span started under the device's context is its child: same trace,
	// new span id in the carrier.
	ctx := Extract(context.Background(), map[string]string{"traceparent": deviceParent})
	sc := trace.SpanContextFromContext(ctx)
	child := trace.NewSpanContext(trace.SpanContextConfig{TraceID: sc.TraceID(), SpanID: trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}, TraceFlags: sc.TraceFlags()})
	got := Inject(trace.ContextWithSpanContext(context.Background(), child), nil)
	if want := "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"; got["traceparent"] != want {
		t.Fatalf("got %v, want traceparent %s", got, want)
	}
}

func TestSetupOffIsNoop(t *testing.T) {
	tp, stop, err := Setup(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tp.(noop.TracerProvider); !ok {
		t.Fatalf("got %T without an endpoint, want the no-op provider", tp)
	}
	if err := stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Setup(Config{Endpoint: "127.0.0.1:4317"}); err == nil {
		t.Fatal("Setup without a service name: got nil error")
	}
}
