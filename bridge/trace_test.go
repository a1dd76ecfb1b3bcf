package bridge_test

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/internal/syncbuf"
	"github.com/edgebridge/edgebridge/tracing"
)

// otelcolPath is the OpenTelemetry Collector scripts/otelcol.sh builds
// (cached after the first build); EDGEBRIDGE_OTELCOL names a prebuilt one.
func otelcolPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("EDGEBRIDGE_OTELCOL"); p != "" {
		return p
	}
	out, err := exec.Command("../scripts/otelcol.sh").Output()
	if err != nil {
		t.Fatalf("build the OpenTelemetry Collector (scripts/otelcol.sh): %v", err)
	}
	return strings.TrimSpace(string(out))
}

// collector is a real OpenTelemetry Collector: it receives the bridge's and
// the backend's spans over OTLP/gRPC and forwards them over OTLP/gRPC to
// sink, an OTLP trace service in this test that keeps them.
type collector struct {
	addr string
	sink *spanSink
}

// spanSink is the OTLP trace service the collector exports to.
type spanSink struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []span
}

// span is one span as the collector forwarded it.
type span struct {
	TraceID, SpanID, ParentSpanID, Name string
	Start                               uint64
	Attrs                               map[string]string
	Service                             string
}

func (s *spanSink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				out := span{TraceID: hex.EncodeToString(sp.GetTraceId()), SpanID: hex.EncodeToString(sp.GetSpanId()),
					ParentSpanID: hex.EncodeToString(sp.GetParentSpanId()), Name: sp.GetName(), Start: sp.GetStartTimeUnixNano(),
					Attrs: map[string]string{}, Service: service}
				for _, a := range sp.GetAttributes() {
					v := a.GetValue()
					switch {
					case v.GetStringValue() != "":
						out.Attrs[a.GetKey()] = v.GetStringValue()
					default:
						out.Attrs[a.GetKey()] = strconv.FormatInt(v.GetIntValue(), 10)
						if _, ok := v.GetValue().(*commonpb.AnyValue_BoolValue); ok {
							out.Attrs[a.GetKey()] = strconv.FormatBool(v.GetBoolValue())
						}
					}
				}
				s.spans = append(s.spans, out)
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (s *spanSink) all() []span {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.spans)
}

func startCollector(t *testing.T) *collector {
	t.Helper()
	sinkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink := &spanSink{}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, sink)
	go func() { _ = gs.Serve(sinkLn) }()
	t.Cleanup(gs.Stop)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %s
exporters:
  otlp_grpc:
    endpoint: %s
    tls: {insecure: true}
    sending_queue: {enabled: false}
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [otlp_grpc]
`, addr, sinkLn.Addr().String())
	confPath := filepath.Join(t.TempDir(), "otelcol.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(otelcolPath(t), "--config", "file:"+confPath)
	var out syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("--- otelcol output ---\n%s", out.String())
		}
	})
	waitUntil(t, "the collector to listen", func() bool {
		select {
		case <-done:
			t.Fatalf("the collector exited:\n%s", out.String())
		default:
		}
		conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	return &collector{addr: addr, sink: sink}
}

// TestTraceAcrossHops: a request a device sent with a traceparent goes
// MQTT -> Kafka -> gRPC (answered RETRY once, then OK) -> reply, and a
// poison message is dead-lettered; a real OpenTelemetry Collector receives
// each as one trace under the device's trace id, every hop a span in order
// with the right parent, the retried delivery as two deliver spans each
// with its backend span.
func TestTraceAcrossHops(t *testing.T) {
	col := startCollector(t)
	bridgeTP, stopBridge, err := tracing.Setup(tracing.Config{Endpoint: col.addr, Service: "edgebridge"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stopBridge(context.Background()) }()
	backendTP, stopBackend, err := tracing.Setup(tracing.Config{Endpoint: col.addr, Service: "test-backend"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stopBackend(context.Background()) }()

	var mu sync.Mutex
	calls := map[string]int{}
	handle := func(_ context.Context, env *v1.Envelope) backend.Result {
		mu.Lock()
		defer mu.Unlock()
		if calls[env.RequestId]++; calls[env.RequestId] == 1 {
			return backend.Result{Outcome: v1.Outcome_OUTCOME_RETRY, Code: v1.ReasonCode_REASON_CODE_BUSY}
		}
		return approve(env)
	}
	p := newPipeline(t, handle)
	// The pipeline's own backend is replaced by a traced one.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := backend.NewGRPCServer()
	backend.NewServer(backend.Config{}, handle, nil, backend.WithTracerProvider(backendTP)).Register(gs)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	p.Config.Backend.Targets = []string{ln.Addr().String()}
	p.Config.Backend.RetryBackoff = 10 * time.Millisecond
	p.StartTest(t, bridge.WithTracerProvider(bridgeTP))

	const (
		okTrace     = "4bf92f3577b34da6a3ce929d0e0e4736"
		okParent    = "00f067aa0ba902b7"
		poisonTrace = "0af7651916cd43dd8448eb211c80319c"
		poisonSpan  = "b7ad6b7169203331"
	)
	replies := make(chan []byte, 2)
	dev := device(t, p, "dev-1", replies)
	dev.Publish("payment/request/dev-1", 1, false,
		`{"request_id":"traced","amount_minor":100,"currency":"EUR","traceparent":"00-`+okTrace+`-`+okParent+`-01"}`).Wait()
	dev.Publish("payment/request/dev-1", 1, false,
		`{"request_id":"poison","amount_minor":-5,"currency":"EUR","traceparent":"00-`+poisonTrace+`-`+poisonSpan+`-01"}`).Wait()
	got := awaitReplies(t, replies, 2)
	if got["traced"].Status != "APPROVED" || got["poison"].Status != "REJECTED" {
		t.Fatalf("got replies %+v, want traced APPROVED and poison REJECTED", got)
	}

	byTrace := func(id string) []span {
		var out []span
		for _, s := range col.sink.all() {
			if s.TraceID == id {
				out = append(out, s)
			}
		}
		slices.SortStableFunc(out, func(a, b span) int { return cmp.Compare(a.Start, b.Start) })
		return out
	}
	names := func(ss []span) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.Name)
		}
		return out
	}
	wantOK := []string{"mqtt receive", "kafka produce", "kafka consume", "deliver", "backend process", "deliver", "backend process", "mqtt reply"}
	waitUntil(t, "the traced request's spans at the collector", func() bool { return len(byTrace(okTrace)) >= len(wantOK) })
	waitUntil(t, "the poison message's spans at the collector", func() bool { return len(byTrace(poisonTrace)) >= 3 })

	ok := byTrace(okTrace)
	if got := names(ok); !slices.Equal(got, wantOK) {
		t.Fatalf("traced request: got spans %q in start order, want %q", got, wantOK)
	}
	parentOf := func(ss []span, i int) string {
		for _, s := range ss {
			if s.SpanID == ss[i].ParentSpanID {
				return s.Name
			}
		}
		return ss[i].ParentSpanID // the device's span, or unknown
	}
	wantParents := []string{okParent, "mqtt receive", "mqtt receive", "kafka consume", "deliver", "kafka consume", "deliver", "kafka consume"}
	for i := range ok {
		if got := parentOf(ok, i); got != wantParents[i] {
			t.Errorf("traced request: span %d %q has parent %q, want %q", i, ok[i].Name, got, wantParents[i])
		}
	}
	if ok[3].Attrs["edgebridge.attempt"] != "1" || ok[5].Attrs["edgebridge.attempt"] != "2" ||
		ok[3].Attrs["edgebridge.outcome"] != "OUTCOME_RETRY" || ok[5].Attrs["edgebridge.outcome"] != "OUTCOME_OK" {
		t.Errorf("deliver spans: got %v and %v, want attempt 1 RETRY then attempt 2 OK", ok[3].Attrs, ok[5].Attrs)
	}
	if ok[4].Service != "test-backend" || ok[6].Service != "test-backend" || ok[0].Service != "edgebridge" {
		t.Errorf("got services %q %q %q, want the backend's spans from the backend", ok[0].Service, ok[4].Service, ok[6].Service)
	}

	// The Kafka record carries the receive span's context, in its header
	// and in the envelope (what backends and Dapr apps continue from).
	wantParent := "00-" + okTrace + "-" + ok[0].SpanID + "-01"
	if h, envTrace := requestTrace(t, p.Kafka.Addr(), p.Config.Kafka.Topic, "traced"); h != wantParent || envTrace != wantParent {
		t.Errorf("request record: traceparent header %q, envelope %q; want both %q (the mqtt receive span)", h, envTrace, wantParent)
	}

	poison := byTrace(poisonTrace)
	wantPoison := []string{"mqtt receive", "kafka produce", "mqtt reply"}
	if got := names(poison); !slices.Equal(got, wantPoison) {
		t.Fatalf("poison message: got spans %q, want %q", got, wantPoison)
	}
	if parentOf(poison, 0) != poisonSpan || parentOf(poison, 1) != "mqtt receive" || parentOf(poison, 2) != "mqtt receive" ||
		poison[1].Attrs["edgebridge.dlq_reason"] != "invalid_amount" {
		t.Errorf("poison message: got %+v, want receive under the device's span, a dead-letter produce and a reply under it", poison)
	}
}

// requestTrace returns the traceparent header of the request record of
// requestID and the traceparent its envelope carries.
func requestTrace(t *testing.T, broker, topic, requestID string) (header, envelope string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	found := false
	for !found && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			env := &v1.Envelope{}
			if proto.Unmarshal(r.Value, env) != nil || env.GetRequestId() != requestID {
				return
			}
			found, envelope = true, env.GetTraceContext()["traceparent"]
			for _, h := range r.Headers {
				if h.Key == "traceparent" {
					header = string(h.Value)
				}
			}
		})
	}
	if !found {
		t.Fatalf("no request record of %s", requestID)
	}
	return header, envelope
}
