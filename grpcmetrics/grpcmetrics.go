// Package grpcmetrics records Prometheus metrics of the edgebridge.v1.Delivery
// stream from gRPC stats handlers, on the bridge (Client) and on backends
// (Server), so the delivery logic carries no metric calls. Stats handlers see
// every frame as it is sent or received; the Client also observes the
// grpcout Pool's events for what frames cannot tell (why a stream ended).
//
// Bridge side (Client):
//
//	edgebridge_grpc_stream_reconnects_total{target,reason}
//	edgebridge_grpc_stream_up{addr}
//	edgebridge_grpc_stream_deliveries_total{addr}
//	edgebridge_grpc_stream_redeliveries_total{cause}       cause: resend | retry
//	edgebridge_grpc_stream_acks_total{outcome}
//	edgebridge_grpc_stream_ack_latency_seconds
//	edgebridge_grpc_stream_in_flight{addr}
//	edgebridge_grpc_stream_window_size{addr}               the backend's credit grant
//	edgebridge_grpc_stream_heartbeat_rtt_seconds
//	edgebridge_grpc_stream_heartbeat_interval_seconds{addr}
//	edgebridge_grpc_stream_partition_moves_total{addr}
//	edgebridge_grpc_stream_duplicates_total                ACKs of redeliveries (Ack.duplicate or OUTCOME_DUPLICATE)
//	edgebridge_grpc_stream_protocol_errors_total{error}    unknown_seq | message_id_mismatch | unknown_outcome | unknown_code
//
// Backend side (Server):
//
//	edgebridge_backend_streams
//	edgebridge_backend_deliveries_total
//	edgebridge_backend_redeliveries_total
//	edgebridge_backend_acks_total{outcome,code}
//	edgebridge_backend_duplicates_total                    ACKs of redeliveries (the stored result)
//	edgebridge_backend_processing_seconds
//	edgebridge_backend_in_flight
//	edgebridge_backend_credits
package grpcmetrics

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/stats"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/grpcout"
	"github.com/edgebridge/edgebridge/transcoder"
)

var latencyBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16) // 0.5 ms .. 16 s

// streamMethod is the one RPC these handlers watch.
var streamMethod = "/" + v1.Delivery_ServiceDesc.ServiceName + "/Stream"

// Client holds the bridge-side metrics. Create it with NewClient.
type Client struct {
	reconnects   *prometheus.CounterVec
	up           *prometheus.GaugeVec
	deliveries   *prometheus.CounterVec
	redeliveries *prometheus.CounterVec
	acks         *prometheus.CounterVec
	ackLatency   prometheus.Histogram
	inFlight     *prometheus.GaugeVec
	window       *prometheus.GaugeVec
	rtt          prometheus.Histogram
	interval     *prometheus.GaugeVec
	moves        *prometheus.CounterVec
	duplicates   prometheus.Counter
	protocol     *prometheus.CounterVec
}

// NewClient registers the bridge-side metrics in r.
func NewClient(r prometheus.Registerer) *Client {
	m := &Client{
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgebridge_grpc_stream_reconnects_total",
			Help: "Backend streams that ended or failed to open, by reason."}, []string{"target", "reason"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "edgebridge_grpc_stream_up",
			Help: "1 while a stream to the backend address is open."}, []string{"addr"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgebridge_grpc_stream_deliveries_total",
			Help: "Deliver frames sent, resends included."}, []string{"addr"}),
		redeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgebridge_grpc_stream_redeliveries_total",
			Help: "Deliveries sent again: resend (stream failure, ACK deadline, partition move) or retry (after RETRY)."}, []string{"cause"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgebridge_grpc_stream_acks_total",
			Help: "Backend ACKs by outcome."}, []string{"outcome"}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "edgebridge_grpc_stream_ack_latency_seconds",
			Help: "Time from sending a delivery to its ACK on the same stream.", Buckets: latencyBuckets}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "edgebridge_grpc_stream_in_flight",
			Help: "Deliveries sent and not yet ACKed."}, []string{"addr"}),
		window: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "edgebridge_grpc_stream_window_size",
			Help: "The backend's credit grant: most un-ACKed deliveries allowed."}, []string{"addr"}),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "edgebridge_grpc_stream_heartbeat_rtt_seconds",
			Help: "Ping/pong round-trip time.", Buckets: latencyBuckets}),
		interval: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "edgebridge_grpc_stream_heartbeat_interval_seconds",
			Help: "Current adaptive ping interval."}, []string{"addr"}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgebridge_grpc_stream_partition_moves_total",
			Help: "Partitions moved to this backend address from one that was down."}, []string{"addr"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgebridge_grpc_stream_duplicates_total",
			Help: "ACKs of redeliveries: the backend had processed the message before (wire duplicates)."}),
		protocol: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgebridge_grpc_stream_protocol_errors_total",
			Help: "Backend frames that broke the Delivery protocol, by error."}, []string{"error"}),
	}
	r.MustRegister(m.reconnects, m.up, m.deliveries, m.redeliveries, m.acks, m.ackLatency, m.inFlight, m.window, m.rtt, m.interval, m.moves,
		m.duplicates, m.protocol)
	return m
}

// Observe records a grpcout Pool event (pass it to grpcout.WithEventHook).
func (m *Client) Observe(e grpcout.Event) {
	switch e.Kind {
	case grpcout.StreamUp:
		m.up.WithLabelValues(e.Addr).Set(1)
	case grpcout.StreamDown:
		m.up.WithLabelValues(e.Addr).Set(0)
		m.reconnects.WithLabelValues(e.Target, string(e.Reason)).Inc()
	case grpcout.Pong:
		m.rtt.Observe(e.RTT.Seconds())
		m.interval.WithLabelValues(e.Addr).Set(e.Interval.Seconds())
	case grpcout.Moved:
		m.moves.WithLabelValues(e.Addr).Add(float64(e.Partitions))
	case grpcout.ProtocolError:
		m.protocol.WithLabelValues(string(e.Problem)).Inc()
	}
}

// Handler returns the stats handler for one backend address (pass
// m.Handler to grpcout.WithStatsHandler).
func (m *Client) Handler(_, addr string) stats.Handler {
	return &clientHandler{m: m, addr: addr,
		deliveries: m.deliveries.WithLabelValues(addr), inFlight: m.inFlight.WithLabelValues(addr), window: m.window.WithLabelValues(addr)}
}

type clientHandler struct {
	m          *Client
	addr       string
	deliveries prometheus.Counter
	inFlight   prometheus.Gauge
	window     prometheus.Gauge
}

// rpcState is one stream's deliveries awaiting their ACK.
type rpcState struct {
	mu   sync.Mutex
	sent map[uint64]time.Time
	// early holds ACKs handled before their delivery's OutPayload: grpc-go
	// reports a sent message after the write, and the receiving goroutine
	// can see the ACK first.
	early map[uint64]time.Time
}

func newRPCState() *rpcState {
	return &rpcState{sent: map[uint64]time.Time{}, early: map[uint64]time.Time{}}
}

type rpcKey struct{}

func (h *clientHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if info.FullMethodName != streamMethod {
		return ctx
	}
	return context.WithValue(ctx, rpcKey{}, newRPCState())
}

func (h *clientHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	st, _ := ctx.Value(rpcKey{}).(*rpcState)
	if st == nil {
		return
	}
	switch s := s.(type) {
	case *stats.OutPayload:
		f, _ := s.Payload.(*v1.ClientFrame)
		d := f.GetDeliver()
		if d == nil {
			return
		}
		h.deliveries.Inc()
		switch {
		case d.GetResends() > 0:
			h.m.redeliveries.WithLabelValues("resend").Inc()
		case d.GetEnvelope().GetAttempt() > 1:
			h.m.redeliveries.WithLabelValues("retry").Inc()
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		if acked, ok := st.early[d.GetSeq()]; ok {
			delete(st.early, d.GetSeq())
			h.m.ackLatency.Observe(max(acked.Sub(s.SentTime), 0).Seconds())
			return
		}
		if _, dup := st.sent[d.GetSeq()]; !dup {
			h.inFlight.Inc()
		}
		st.sent[d.GetSeq()] = s.SentTime
	case *stats.InPayload:
		f, _ := s.Payload.(*v1.ServerFrame)
		switch fr := f.GetFrame().(type) {
		case *v1.ServerFrame_Ack:
			h.m.acks.WithLabelValues(OutcomeLabel(fr.Ack.GetOutcome())).Inc()
			if IsDuplicate(fr.Ack) {
				h.m.duplicates.Inc()
			}
			st.mu.Lock()
			sent, ok := st.sent[fr.Ack.GetSeq()]
			delete(st.sent, fr.Ack.GetSeq())
			if !ok {
				st.early[fr.Ack.GetSeq()] = s.RecvTime
			}
			st.mu.Unlock()
			if ok {
				h.inFlight.Dec()
				h.m.ackLatency.Observe(s.RecvTime.Sub(sent).Seconds())
			}
		case *v1.ServerFrame_Welcome:
			if fr.Welcome.Credits != nil { // absent: the bridge's window
				h.window.Set(float64(fr.Welcome.GetCredits()))
			}
		case *v1.ServerFrame_Credit:
			h.window.Set(float64(fr.Credit.GetCredits()))
		}
	case *stats.End:
		st.mu.Lock()
		h.inFlight.Sub(float64(len(st.sent)))
		clear(st.sent)
		clear(st.early)
		st.mu.Unlock()
	}
}

func (h *clientHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (h *clientHandler) HandleConn(context.Context, stats.ConnStats) {}

// Server holds the backend-side metrics and is the backend's stats handler
// (grpc.StatsHandler(m)). Create it with NewServer.
type Server struct {
	streams      prometheus.Gauge
	deliveries   prometheus.Counter
	redeliveries prometheus.Counter
	acks         *prometheus.CounterVec
	duplicates   prometheus.Counter
	processing   prometheus.Histogram
	inFlight     prometheus.Gauge
	credits      prometheus.Gauge
}

// NewServer registers the backend-side metrics in r.
func NewServer(r prometheus.Registerer) *Server {
	m := &Server{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgebridge_backend_streams",
			Help: "Open bridge streams."}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgebridge_backend_deliveries_total",
			Help: "Deliveries received, redeliveries included."}),
		redeliveries: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgebridge_backend_redeliveries_total",
			Help: "Deliveries the bridge says it sent before."}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgebridge_backend_acks_total",
			Help: "ACKs sent by outcome and reason code."}, []string{"outcome", "code"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgebridge_backend_duplicates_total",
			Help: "ACKs of redeliveries, answered with the stored result."}),
		processing: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "edgebridge_backend_processing_seconds",
			Help: "Time from receiving a delivery to sending its ACK.", Buckets: latencyBuckets}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgebridge_backend_in_flight",
			Help: "Deliveries received and not yet ACKed."}),
		credits: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgebridge_backend_credits",
			Help: "The credit grant last sent to a bridge."}),
	}
	r.MustRegister(m.streams, m.deliveries, m.redeliveries, m.acks, m.duplicates, m.processing, m.inFlight, m.credits)
	return m
}

func (m *Server) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if info.FullMethodName != streamMethod {
		return ctx
	}
	return context.WithValue(ctx, rpcKey{}, newRPCState())
}

func (m *Server) HandleRPC(ctx context.Context, s stats.RPCStats) {
	st, _ := ctx.Value(rpcKey{}).(*rpcState)
	if st == nil {
		return
	}
	switch s := s.(type) {
	case *stats.Begin:
		m.streams.Inc()
	case *stats.InPayload:
		f, _ := s.Payload.(*v1.ClientFrame)
		d := f.GetDeliver()
		if d == nil {
			return
		}
		m.deliveries.Inc()
		if d.GetResends() > 0 {
			m.redeliveries.Inc()
		}
		st.mu.Lock()
		if _, dup := st.sent[d.GetSeq()]; !dup {
			m.inFlight.Inc()
		}
		st.sent[d.GetSeq()] = s.RecvTime
		st.mu.Unlock()
	case *stats.OutPayload:
		f, _ := s.Payload.(*v1.ServerFrame)
		switch fr := f.GetFrame().(type) {
		case *v1.ServerFrame_Ack:
			m.acks.WithLabelValues(OutcomeLabel(fr.Ack.GetOutcome()), transcoder.CodeName(fr.Ack.GetCode())).Inc()
			if IsDuplicate(fr.Ack) {
				m.duplicates.Inc()
			}
			st.mu.Lock()
			recv, ok := st.sent[fr.Ack.GetSeq()]
			delete(st.sent, fr.Ack.GetSeq())
			st.mu.Unlock()
			if ok {
				m.inFlight.Dec()
				m.processing.Observe(s.SentTime.Sub(recv).Seconds())
			}
		case *v1.ServerFrame_Welcome:
			m.credits.Set(float64(fr.Welcome.GetCredits()))
		case *v1.ServerFrame_Credit:
			m.credits.Set(float64(fr.Credit.GetCredits()))
		}
	case *stats.End:
		m.streams.Dec()
		st.mu.Lock()
		m.inFlight.Sub(float64(len(st.sent)))
		clear(st.sent)
		st.mu.Unlock()
	}
}

func (m *Server) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (m *Server) HandleConn(context.Context, stats.ConnStats) {}

// IsDuplicate reports whether ack answers a redelivery: the duplicate
// flag, or OUTCOME_DUPLICATE from backends older than the flag.
func IsDuplicate(ack *v1.Ack) bool {
	return ack.GetDuplicate() || ack.GetOutcome() == v1.Outcome_OUTCOME_DUPLICATE
}

// OutcomeLabel is the metric label of an outcome: ok, duplicate, retry,
// reject, or unknown for unspecified and undefined numbers (labels stay a
// fixed set whatever a backend sends).
func OutcomeLabel(o v1.Outcome) string {
	name, ok := v1.Outcome_name[int32(o)]
	if !ok || o == v1.Outcome_OUTCOME_UNSPECIFIED {
		return "unknown"
	}
	return strings.ToLower(strings.TrimPrefix(name, "OUTCOME_"))
}
