package grpcmetrics_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/grpcmetrics"
	"github.com/edgebridge/edgebridge/grpcout"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Both sides' metrics come from stats handlers watching real frames.
func TestStreamMetrics(t *testing.T) {
	serverReg, clientReg := prometheus.NewRegistry(), prometheus.NewRegistry()
	sm := grpcmetrics.NewServer(serverReg)
	srv := backend.NewServer(backend.Config{Credits: 8}, func(_ context.Context, env *v1.Envelope) backend.Result {
		if env.RequestId == "reject" {
			return backend.Result{Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_NOT_PERMITTED}
		}
		return backend.Result{Outcome: v1.Outcome_OUTCOME_OK}
	}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.StatsHandler(sm))
	srv.Register(gs)
	served := make(chan struct{})
	go func() { _ = gs.Serve(ln); close(served) }()
	defer func() { gs.Stop(); <-served }()

	cm := grpcmetrics.NewClient(clientReg)
	addr := ln.Addr().String()
	p, err := grpcout.New(grpcout.Config{Targets: []string{addr}, Window: 16},
		grpcout.WithEventHook(cm.Observe), grpcout.WithStatsHandler(cm.Handler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	acked := make(chan struct{}, 51)
	for i := range 51 {
		rid := fmt.Sprintf("r-%d", i%50) // the last is a redelivery of the first
		if i == 7 {
			rid = "reject"
		}
		env := &v1.Envelope{MessageId: v1.MessageID("d", rid), DeviceId: "d", RequestId: rid}
		p.Deliver(0, env, func(*v1.Ack) error { acked <- struct{}{}; return nil })
	}
	for range 51 {
		select {
		case <-acked:
		case <-time.After(20 * time.Second):
			t.Fatal("timed out waiting for ACKs")
		}
	}
	want := func(name string, got, want float64) {
		t.Helper()
		if got != want {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
	// The client counts the ACK after its handler returns; wait for the last.
	deadline := time.Now().Add(5 * time.Second)
	for value(t, serverReg, "edgebridge_backend_in_flight") != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	want("client deliveries", value(t, clientReg, "edgebridge_grpc_stream_deliveries_total", "addr", addr), 51)
	want("client acks ok", value(t, clientReg, "edgebridge_grpc_stream_acks_total", "outcome", "ok"), 50)
	want("client duplicates", value(t, clientReg, "edgebridge_grpc_stream_duplicates_total"), 1)
	want("client acks reject", value(t, clientReg, "edgebridge_grpc_stream_acks_total", "outcome", "reject"), 1)
	want("client in flight", value(t, clientReg, "edgebridge_grpc_stream_in_flight", "addr", addr), 0)
	want("client window", value(t, clientReg, "edgebridge_grpc_stream_window_size", "addr", addr), 8)
	want("client up", value(t, clientReg, "edgebridge_grpc_stream_up", "addr", addr), 1)
	if n := testutil.CollectAndCount(clientReg, "edgebridge_grpc_stream_ack_latency_seconds"); n != 1 {
		t.Errorf("ack latency histogram: got %d series, want 1", n)
	}
	want("server acks reject/not_permitted", value(t, serverReg, "edgebridge_backend_acks_total", "outcome", "reject", "code", "not_permitted"), 1)
	want("server acks ok", value(t, serverReg, "edgebridge_backend_acks_total", "outcome", "ok", "code", ""), 50)
	want("server duplicates", value(t, serverReg, "edgebridge_backend_duplicates_total"), 1)
	want("server in flight", value(t, serverReg, "edgebridge_backend_in_flight"), 0)
	want("server streams", value(t, serverReg, "edgebridge_backend_streams"), 1)
	want("server credits", value(t, serverReg, "edgebridge_backend_credits"), 8)
}

// value returns the counter or gauge name{labels...} from reg.
func value(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
				}
				if !found {
					continue metrics
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// grpc-go reports a sent message after the write, so a fast ACK can be
// handled before its delivery: in-flight must not drift upwards.
func TestAckBeforeItsDeliveryIsReported(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := grpcmetrics.NewClient(reg).Handler("t", "a:1")
	ctx := h.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: "/" + v1.Delivery_ServiceDesc.ServiceName + "/Stream"})
	now := time.Now()
	h.HandleRPC(ctx, &stats.InPayload{Payload: &v1.ServerFrame{Frame: &v1.ServerFrame_Ack{Ack: &v1.Ack{Seq: 1, Outcome: v1.Outcome_OUTCOME_OK}}}, RecvTime: now})
	h.HandleRPC(ctx, &stats.OutPayload{Payload: &v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: 1}}}, SentTime: now})
	if got := value(t, reg, "edgebridge_grpc_stream_in_flight", "addr", "a:1"); got != 0 {
		t.Fatalf("got in flight %v, want 0", got)
	}
	if n := testutil.CollectAndCount(reg, "edgebridge_grpc_stream_ack_latency_seconds"); n != 1 {
		t.Fatalf("got %d latency series, want 1", n)
	}
	if got := value(t, reg, "edgebridge_grpc_stream_deliveries_total", "addr", "a:1"); got != 1 {
		t.Fatalf("got %v deliveries, want 1", got)
	}
}
