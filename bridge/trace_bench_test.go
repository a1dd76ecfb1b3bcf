package bridge

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/settle"
)

// BenchmarkTracedIngest is one request's ingest decision and its read back
// from Kafka with tracing off, and on with the request left out by the
// sampler (ratio 0.01: 99 in 100) or recorded.
func BenchmarkTracedIngest(b *testing.B) {
	r := testRules()
	m := message("payment/request/dev-0001", []byte(`{"request_id":"r-000042","amount_minor":1250,"currency":"EUR","merchant_id":"m-1"}`), false)
	for _, c := range []struct {
		name  string
		ratio float64
		off   bool
	}{{"off", 0, true}, {"unsampled", 0, false}, {"sampled", 1, false}} {
		b.Run(c.name, func(b *testing.B) {
			tr := newTraces(nil)
			if !c.off {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.ratio))))
				defer tp.Shutdown(context.Background())
				tr = newTraces(tp)
			}
			b.ReportAllocs()
			for b.Loop() {
				spans := tr.receiving(1)
				adms := []admission{r.admit(m, spans.admit(0, m))}
				spans.producing([]int{0}, adms).end(nil)
				spans.end()
				env := &v1.Envelope{}
				if err := proto.Unmarshal(adms[0].rec.Value, env); err != nil {
					b.Fatal(err)
				}
				rec := &settle.Record{Envelope: env}
				tr.consuming(rec)
				settledSpan(rec, settle.Decision{})
			}
		})
	}
}
