// Package backend is the server side of the edgebridge.v1.Delivery stream,
// for backend authors: register a Server on a gRPC server, give it a Handler
// and a Store, and it answers hello, heartbeats (with its load) and drain,
// grants credits (changeable at runtime with SetCredits), serves
// grpc.health.v1 for the bridge's pre-reconnect checks, refuses envelopes
// that break the contract (v1.CheckEnvelope: bounded fields, a message id
// derived from device and request id) without calling the handler or
// storing anything, deduplicates redeliveries by message id and content
// fingerprint (a redelivery is ACKed with the stored outcome and reply and
// the duplicate flag, the handler is not called again; the same id with
// different content is a REJECT with REASON_CODE_CONFLICT), and ACKs each
// delivery only after the Store made its result durable.
//
// It trusts nothing a bridge sends: the window in Hello is clamped to
// v1.MaxWindow, a stream that sends more un-ACKed deliveries than its
// window is ended (what it queued is not processed), and deliveries
// waiting to be processed are bounded in
// bytes (Config.MaxQueuedBytes) by not reading more until they drain.
//
// Backends behind one bridge must share their Store (a database, in
// practice): the bridge moves a dead backend's un-ACKed deliveries to the
// others, and only a shared store turns that redelivery into a DUPLICATE.
package backend

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/tracing"
)

// Result is a handler's verdict on one envelope.
type Result struct {
	Outcome v1.Outcome    // OK, RETRY or REJECT (DUPLICATE is set by the Server)
	Code    v1.ReasonCode // why, for RETRY and REJECT: the device and the DLQ see it
	Reason  string        // human-readable detail
	// Reply is the device's reply; the bridge fills in request and message
	// id and renders it. nil: none (the bridge builds one for REJECT).
	Reply *v1.PaymentReply
	// RawReply, if set, is published to the device as is instead.
	RawReply []byte
}

// Handler processes one envelope that passed v1.CheckEnvelope. It is called
// at most once per message id whose result was saved (OK or REJECT); a
// RETRY result is not saved, so the redelivery calls it again. Neither is a
// REJECT with REASON_CODE_INVALID_REQUEST: the envelope itself is unusable,
// nothing in it is kept, and a redelivery is judged again.
type Handler func(ctx context.Context, env *v1.Envelope) Result

// Stored is a saved final result and the fingerprint of the envelope it
// answered ("" for results saved before envelopes carried one: those match
// any content).
type Stored struct {
	Result
	Fingerprint string
}

// Store remembers final results by message id.
type Store interface {
	// Lookup returns the saved result of messageID.
	Lookup(messageID string) (Stored, bool)
	// Save records the final result of env, with env's fingerprint. It may
	// buffer; see Syncer.
	Save(env *v1.Envelope, r Result) error
}

// Syncer is implemented by stores that buffer Save: Sync makes every saved
// result durable, and the Server calls it before sending the ACKs of those
// results, so an ACKed message is never processed again after a crash.
type Syncer interface {
	Sync() error
}

// Config configures a Server. Zero values mean the default.
type Config struct {
	// ID is sent to bridges in Welcome. Default: "backend".
	ID string
	// Credits is how many un-ACKed deliveries a bridge may send on one
	// stream; 0 lets the bridge use its own window. SetCredits changes it
	// at runtime.
	Credits uint32
	// HeartbeatInterval suggested to bridges; 0 keeps the bridge's default.
	HeartbeatInterval time.Duration
	// MaxQueuedBytes bounds the deliveries of one stream that were received
	// and not yet processed; past it the stream is not read until they
	// drain (the bridge is held back by HTTP/2 flow control). A bridge's
	// full window of payment envelopes (a few hundred bytes each) stays
	// far below it. Default: 16 MiB.
	MaxQueuedBytes int64
}

// defaultMaxQueuedBytes is Config.MaxQueuedBytes' default.
const defaultMaxQueuedBytes = 16 << 20

// ServiceName is the name under which the Server reports its health in
// grpc.health.v1 (the empty name reports the same status).
const ServiceName = "edgebridge.v1.Delivery"

// Server implements edgebridge.v1.DeliveryServer. It is safe for concurrent use.
type Server struct {
	v1.UnimplementedDeliveryServer
	cfg    Config
	handle Handler
	store  Store
	log    *slog.Logger
	serial sync.Locker // one message at a time: dedup across streams is exact
	health *health.Server
	tracer trace.Tracer

	mu      sync.Mutex
	streams map[*serverStream]struct{}
	credits atomic.Int64 // the current grant; -1: the bridge's window
	drained atomic.Bool
}

// Option configures optional hooks.
type Option func(*Server)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithTracerProvider records a "backend process" span for each delivery,
// continuing the request's trace from Envelope.trace_context (the bridge's
// delivery attempt). Default: none.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(s *Server) { s.tracer = tp.Tracer(tracing.Tracer) }
}

// WithDedupLock shares the lock that makes lookup, handling and saving one
// step between Servers in one process that share a Store. Servers in
// different processes need a Store that does this itself (a unique key).
func WithDedupLock(l sync.Locker) Option { return func(s *Server) { s.serial = l } }

// NewServer returns a Server. store may be nil for NewMemoryStore(1024).
func NewServer(cfg Config, h Handler, store Store, opts ...Option) *Server {
	if cfg.ID == "" {
		cfg.ID = "backend"
	}
	if cfg.MaxQueuedBytes <= 0 {
		cfg.MaxQueuedBytes = defaultMaxQueuedBytes
	}
	if store == nil {
		store = NewMemoryStore(1024)
	}
	s := &Server{cfg: cfg, handle: h, store: store, log: slog.Default(), serial: new(sync.Mutex),
		streams: make(map[*serverStream]struct{}), health: health.NewServer(), tracer: noop.NewTracerProvider().Tracer(tracing.Tracer)}
	s.credits.Store(-1)
	if cfg.Credits > 0 {
		s.credits.Store(int64(cfg.Credits))
	}
	s.health.SetServingStatus(ServiceName, healthpb.HealthCheckResponse_SERVING)
	for _, o := range opts {
		o(s)
	}
	return s
}

// Register adds the Delivery service and the grpc.health.v1 service to r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	v1.RegisterDeliveryServer(r, s)
	healthpb.RegisterHealthServer(r, s.health)
}

// Drain asks every connected bridge to finish its outstanding deliveries and
// move away; new streams are told to drain at once, and health checks answer
// NOT_SERVING. Call it before grpc.Server.GracefulStop.
func (s *Server) Drain(reason string) {
	s.drained.Store(true)
	s.health.Shutdown()
	s.broadcast(&v1.ServerFrame{Frame: &v1.ServerFrame_Drain{Drain: &v1.Drain{Reason: reason}}})
}

// SetCredits changes how many un-ACKed deliveries each bridge stream may
// have, on open streams at once and for new ones. 0 pauses the bridges:
// they send nothing (and stop fetching from Kafka once their window is
// full) until the grant grows. Shrinking does not recall deliveries already
// sent; the bridge sends no more until it is below the new grant.
func (s *Server) SetCredits(n uint32) {
	s.credits.Store(int64(n))
	s.broadcast(&v1.ServerFrame{Frame: &v1.ServerFrame_Credit{Credit: &v1.Credit{Credits: n}}})
}

func (s *Server) broadcast(f *v1.ServerFrame) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for st := range s.streams {
		st.push(f)
	}
}

type serverStream struct {
	out      chan *v1.ServerFrame
	done     chan struct{}
	window   uint32
	inflight atomic.Int64  // received and not yet ACKed
	queued   atomic.Int64  // bytes received and not yet processed
	drained  chan struct{} // signalled when queued shrinks
}

// load is how busy the stream is, 0-100: un-ACKed deliveries against the
// grant (credits < 0: the bridge's window; 0: paused, fully loaded).
func (st *serverStream) load(credits int64) uint32 {
	switch {
	case credits == 0:
		return 100
	case credits < 0:
		credits = int64(st.window)
	}
	return uint32(min(100, 100*st.inflight.Load()/credits))
}

// push queues a frame for the stream's sender; frames for a closed stream are dropped.
func (st *serverStream) push(f *v1.ServerFrame) {
	select {
	case st.out <- f:
	case <-st.done:
	}
}

// Stream serves one bridge stream: this goroutine receives, one goroutine
// processes deliveries in arrival order, one sends.
func (s *Server) Stream(stream v1.Delivery_StreamServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "backend: first frame must be hello")
	}
	// Channels are sized from the window: never from more than a bridge may ask.
	window := min(max(hello.GetWindow(), 1), v1.MaxWindow)
	// The out channel holds an ACK per delivery in the window plus control
	// frames; push blocks when it is full, which only a stalled sender causes.
	st := &serverStream{out: make(chan *v1.ServerFrame, 2*window+8), done: make(chan struct{}),
		window: window, drained: make(chan struct{}, 1)}
	s.mu.Lock()
	s.streams[st] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
	}()
	welcome := &v1.Welcome{BackendId: s.cfg.ID, HeartbeatIntervalMs: uint32(s.cfg.HeartbeatInterval / time.Millisecond)}
	if c := s.credits.Load(); c >= 0 { // absent: the bridge's window
		welcome.Credits = proto.Uint32(uint32(c))
	}
	if err := stream.Send(&v1.ServerFrame{Frame: &v1.ServerFrame_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	if s.drained.Load() {
		st.push(&v1.ServerFrame{Frame: &v1.ServerFrame_Drain{Drain: &v1.Drain{Reason: "server draining"}}})
	}

	ctx := stream.Context()
	// A bridge that breaks the protocol gets nothing more processed.
	pctx, stopProcessing := context.WithCancel(ctx)
	defer stopProcessing()
	work := make(chan queuedDelivery, window+8)
	var wg sync.WaitGroup
	sendErr := make(chan error, 1)
	wg.Go(func() { sendErr <- s.sendLoop(stream, st) })
	wg.Go(func() { s.processLoop(pctx, work, st) })

	var violation error
	for violation == nil {
		if !s.waitQueue(ctx, st) {
			break
		}
		f, err := stream.Recv()
		if err != nil {
			break // io.EOF or the stream's context ended
		}
		switch fr := f.Frame.(type) {
		case *v1.ClientFrame_Deliver:
			if st.inflight.Add(1) > int64(window) {
				violation = status.Errorf(codes.ResourceExhausted, "backend: more than the window of %d un-ACKed deliveries", window)
				s.log.Warn("backend: bridge broke the protocol; ending the stream", "bridge_id", fmt.Sprintf("%.64q", hello.GetBridgeId()), "err", violation)
				stopProcessing()
				continue
			}
			q := queuedDelivery{d: fr.Deliver, size: int64(proto.Size(fr.Deliver))}
			st.queued.Add(q.size)
			select {
			case work <- q:
			case <-ctx.Done():
			}
		case *v1.ClientFrame_Ping:
			// Pongs come from this goroutine, not the processor: a slow
			// handler shows as load, not as a dead stream.
			st.push(&v1.ServerFrame{Frame: &v1.ServerFrame_Pong{Pong: &v1.Pong{
				Seq: fr.Ping.GetSeq(), PingSentUnixNano: fr.Ping.GetSentUnixNano(), LoadPercent: st.load(s.credits.Load()),
			}}})
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	// processLoop finishes what was received; then the sender stops.
	wg.Wait()
	return cmp.Or(violation, <-sendErr)
}

// waitQueue holds the receiver while the stream's unprocessed deliveries
// exceed MaxQueuedBytes; false if the stream ended meanwhile.
func (s *Server) waitQueue(ctx context.Context, st *serverStream) bool {
	for st.queued.Load() > s.cfg.MaxQueuedBytes {
		select {
		case <-st.drained:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// queuedDelivery is a received delivery and its size, until processed.
type queuedDelivery struct {
	d    *v1.Deliver
	size int64
}

func (s *Server) processLoop(ctx context.Context, work <-chan queuedDelivery, st *serverStream) {
	defer close(st.done)
	for q := range work {
		d := q.d
		st.queued.Add(-q.size)
		select {
		case st.drained <- struct{}{}:
		default:
		}
		if ctx.Err() != nil {
			continue // stream gone: the bridge resends these
		}
		ack := s.traced(ctx, d)
		st.inflight.Add(-1)
		st.push(&v1.ServerFrame{Frame: &v1.ServerFrame_Ack{Ack: ack}})
	}
}

// traced is process inside a "backend process" span under the trace the
// envelope carries.
func (s *Server) traced(ctx context.Context, d *v1.Deliver) *v1.Ack {
	ctx, span := s.tracer.Start(tracing.Extract(ctx, d.GetEnvelope().GetTraceContext()), "backend process",
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("edgebridge.message_id", d.GetEnvelope().GetMessageId()), attribute.Int64("edgebridge.seq", int64(d.GetSeq()))))
	ack := s.process(ctx, d)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("edgebridge.outcome", ack.GetOutcome().String()), attribute.Bool("edgebridge.duplicate", ack.GetDuplicate()))
	}
	span.End()
	return ack
}

// conflictReason is the detail of a REJECT for a reused message id.
const conflictReason = "message id already used for a request with different content"

func (s *Server) process(ctx context.Context, d *v1.Deliver) *v1.Ack {
	env := d.GetEnvelope()
	id := env.GetMessageId()
	ack := &v1.Ack{Seq: d.GetSeq(), MessageId: id}
	if err := v1.CheckEnvelope(env); err != nil {
		// Nothing of it is trusted: not the handler's business, not stored.
		ack.Outcome, ack.Code, ack.Reason = v1.Outcome_OUTCOME_REJECT, v1.ReasonCode_REASON_CODE_INVALID_REQUEST, err.Error()
		return ack
	}
	s.serial.Lock()
	defer s.serial.Unlock()
	if st, ok := s.store.Lookup(id); ok {
		if st.Fingerprint != "" && env.GetFingerprint() != "" && st.Fingerprint != env.GetFingerprint() {
			ack.Outcome, ack.Code, ack.Reason = v1.Outcome_OUTCOME_REJECT, v1.ReasonCode_REASON_CODE_CONFLICT, conflictReason
			return ack
		}
		ack.Outcome, ack.Code, ack.Reason, ack.Reply, ack.RawReply, ack.Duplicate = st.Outcome, st.Code, st.Reason, st.Reply, st.RawReply, true
		if ack.Outcome != v1.Outcome_OUTCOME_REJECT {
			ack.Outcome = v1.Outcome_OUTCOME_OK
		}
		return ack
	}
	r := s.handle(ctx, env)
	ack.Outcome, ack.Code, ack.Reason, ack.Reply, ack.RawReply = r.Outcome, r.Code, r.Reason, r.Reply, r.RawReply
	switch {
	case r.Outcome == v1.Outcome_OUTCOME_REJECT && r.Code == v1.ReasonCode_REASON_CODE_INVALID_REQUEST:
	case r.Outcome == v1.Outcome_OUTCOME_OK || r.Outcome == v1.Outcome_OUTCOME_REJECT:
		if err := s.store.Save(env, r); err != nil {
			s.log.Error("backend: save result", "message_id", id, "err", err)
			ack.Outcome, ack.Code, ack.Reason, ack.Reply, ack.RawReply = v1.Outcome_OUTCOME_RETRY, v1.ReasonCode_REASON_CODE_UNAVAILABLE, "store: "+err.Error(), nil, nil
		}
	default: // RETRY, or an outcome the helper does not know
		ack.Outcome = v1.Outcome_OUTCOME_RETRY
	}
	return ack
}

// sendLoop is the stream's only sending goroutine. It sends frames in
// batches and syncs the store once per batch before any ACK in it leaves.
func (s *Server) sendLoop(stream v1.Delivery_StreamServer, st *serverStream) error {
	syncer, _ := s.store.(Syncer)
	batch := make([]*v1.ServerFrame, 0, cap(st.out))
	var failed error
	for {
		var f *v1.ServerFrame
		select {
		case f = <-st.out:
		case <-st.done:
			// Send whatever the processor produced before it stopped.
			select {
			case f = <-st.out:
			default:
				return failed
			}
		}
		batch = append(batch[:0], f)
	fill:
		for len(batch) < cap(batch) {
			select {
			case f := <-st.out:
				batch = append(batch, f)
			default:
				break fill
			}
		}
		if failed != nil {
			continue // keep draining so the processor never blocks
		}
		if syncer != nil {
			if err := syncer.Sync(); err != nil {
				s.log.Error("backend: sync store; closing stream", "err", err)
				failed = err
				continue
			}
		}
		for _, f := range batch {
			if err := stream.Send(f); err != nil {
				failed = err
				break
			}
		}
	}
}
