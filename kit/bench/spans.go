package bench

import (
	"context"
	"net"
	"sync/atomic"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// spanSink is an OTLP/gRPC trace receiver in the bench process that
// counts the spans it receives and keeps none (-tracing local): the
// bridge's cost of tracing, without a collector's on the same cores.
type spanSink struct {
	coltracepb.UnimplementedTraceServiceServer
	spans atomic.Int64
	srv   *grpc.Server
	addr  string
}

func startSpanSink() (*spanSink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &spanSink{srv: grpc.NewServer(), addr: ln.Addr().String()}
	coltracepb.RegisterTraceServiceServer(s.srv, s)
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *spanSink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			s.spans.Add(int64(len(ss.GetSpans())))
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (s *spanSink) close() { s.srv.Stop() }
