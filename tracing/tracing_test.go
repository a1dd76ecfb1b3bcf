package tracing

import (
	"context"
	"maps"
	"strings"
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

// NotSampled says "not sampled" only when the propagator extracts a valid
// span context whose sampled flag is off, and for every such version-00
// header (other versions take the usual path).
func TestNotSampledAgreesWithThePropagator(t *testing.T) {
	const ids = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
	parents := []string{
		"00-" + ids + "-00", "00-" + ids + "-01", "00-" + ids + "-02", "00-" + ids + "-03",
		"00-" + ids + "-0a", "00-" + ids + "-0b", "00-" + ids + "-fe", "00-" + ids + "-ff",
		"00-" + ids + "-0A", "00-" + ids + "-0g", "00-" + ids + "-0", "00-" + ids + "-000",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-00",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-00",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-00",
		"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-00",
		"01-" + ids + "-00", "ff-" + ids + "-00", "", "00-zz",
	}
	var notSampled int
	for _, tp := range parents {
		carrier := map[string]string{"traceparent": tp}
		sc := trace.SpanContextFromContext(Extract(context.Background(), carrier))
		want := sc.IsValid() && !sc.IsSampled()
		got := NotSampled(carrier)
		if got != want && (got || strings.HasPrefix(tp, "00-")) {
			t.Errorf("NotSampled(%q) = %v, the propagator says valid %v sampled %v", tp, got, sc.IsValid(), sc.IsSampled())
		}
		if got {
			notSampled++
		}
	}
	if notSampled != 2 || NotSampled(nil) {
		t.Fatalf("%d of the cases not sampled (want the flags 00 and 02), NotSampled(nil) %v", notSampled, NotSampled(nil))
	}
}
