//go:build !race

package bridge

import (
	"context"
	"fmt"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/settle"
	"github.com/edgebridge/edgebridge/tracing"
	"github.com/edgebridge/edgebridge/transcoder"
)

// The allocations of the ingest decision for one valid 1 KB request:
// decoded, checked, enveloped, marshalled, made a Kafka record. A change
// that allocates more per message fails here, deterministically
// (testing.AllocsPerRun; not under -race, whose sync.Pool drops items at
// random: scripts/test.sh runs these without it). Lower the budget when
// a change saves some.
func TestAdmitAllocs(t *testing.T) {
	r := testRules()
	pad := strings.Repeat("x", 1024-110)
	m := message("payment/request/dev-0001", fmt.Appendf(nil,
		`{"request_id":"r-000042","amount_minor":1250,"currency":"EUR","merchant_id":"m-dev-0001","memo":%q}`, pad), false)
	if a := r.admit(m, nil); a.dead != nil {
		t.Fatalf("dead-lettered: %+v", a.dead)
	}
	checkAllocs(t, "admit", admitAllocs, func() { _ = r.admit(m, nil) })
}

// The reply a device gets for a backend's answer.
func TestReplyAllocs(t *testing.T) {
	rep := &v1.PaymentReply{RequestId: "r-000042", MessageId: v1.MessageID("dev-0001", "r-000042"), Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}
	checkAllocs(t, "transcoder.EncodeReply", replyAllocs, func() { _ = transcoder.EncodeReply(rep) })
}

// Budgets: what the code allocates today, per message. To see where:
//
//	go test -run TestAdmitAllocs -memprofile m.out -memprofilerate 1 -o b.test ./bridge
//	go tool pprof -sample_index=alloc_objects -top b.test m.out
//
// Of admit's 23, encoding/json's decode of the request makes 10,
// proto.Marshal 3.
const (
	admitAllocs          = 23
	replyAllocs          = 2
	unsampledTraceAllocs = 15
)

func checkAllocs(t *testing.T, what string, budget float64, f func()) {
	t.Helper()
	got := testing.AllocsPerRun(200, f)
	t.Logf("%s: %.0f allocations per message (budget %.0f)", what, got, budget)
	if got > budget {
		t.Errorf("%s: %.0f allocations per message, budget %.0f", what, got, budget)
	}
}

// With tracing on, a request the sampler leaves out (ratio 0.01: 99 in
// 100) costs little more than with tracing off: its receive and produce
// spans are not recorded. What it still pays for: the trace context it
// carries on, so the backend and the reply stay in its (unsampled) trace.
func TestUnsampledTraceAllocs(t *testing.T) {
	r := testRules()
	m := message("payment/request/dev-0001", []byte(`{"request_id":"r-000042","amount_minor":1250,"currency":"EUR","merchant_id":"m-1"}`), false)
	ingest := func(tr traces) func() {
		return func() {
			spans := tr.receiving(1)
			adms := []admission{r.admit(m, spans.admit(0, m))}
			spans.producing([]int{0}, adms).end(nil)
			spans.end()
		}
	}
	off := testing.AllocsPerRun(200, ingest(newTraces(nil)))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))))
	defer tp.Shutdown(context.Background())
	on := testing.AllocsPerRun(200, ingest(newTraces(tp)))
	t.Logf("ingest of one request: %.0f allocations, %.0f with tracing on and the request not sampled (budget %d more)", off, on, unsampledTraceAllocs)
	if on-off > unsampledTraceAllocs {
		t.Errorf("an unsampled request costs %.0f allocations more than with tracing off, budget %d", on-off, unsampledTraceAllocs)
	}

	// Read back from Kafka, it makes no span and allocates nothing.
	env := &v1.Envelope{}
	if err := proto.Unmarshal(r.admit(m, ingest0(newTraces(tp), m)).rec.Value, env); err != nil {
		t.Fatal(err)
	}
	if !tracing.NotSampled(env.GetTraceContext()) {
		t.Fatalf("the envelope carries %v, not an unsampled trace", env.GetTraceContext())
	}
	rec := &settle.Record{Envelope: env}
	if a := testing.AllocsPerRun(200, func() { newTraces(tp).consuming(rec) }); a != 0 || rec.Span != nil {
		t.Errorf("consuming an unsampled request: %.0f allocations, a span made: %v; want none", a, rec.Span != nil)
	}
}

// ingest0 is the trace hook of a one-message batch's message.
func ingest0(tr traces, m mqttin.Message) func(map[string]string) map[string]string {
	return tr.receiving(1).admit(0, m)
}
