package settle

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/internal/schedule"
	"github.com/edgebridge/edgebridge/kafkapipe"
)

// Record is one record a consumer was handed, from the moment it is in the
// window until it is ACKed there.
type Record struct {
	Partition int32
	Offset    int64
	// Attempt counts the deliveries so far; the consumer increments it
	// each time it sends the record.
	Attempt int
	// First is when the record was first handed over (the latency metric).
	First time.Time
	// Envelope is the request, when the record holds one: the device reply
	// is rendered for it and a dead letter keeps it (if Payload is nil).
	Envelope *v1.Envelope
	// DeviceID, Source and Payload are what a dead letter keeps: the key,
	// the topic it came from and the bytes.
	DeviceID, Source string
	Payload          []byte
	// ContentType of Payload as the consumer sends it.
	ContentType string
	// ReplyTopic is where the device's reply goes; "" sends none.
	ReplyTopic string
	// Span is the record's tracing span (the consumer's), nil untraced or not sampled;
	// the Sink ends it when the record is settled.
	Span trace.Span
}

// Sink is what a Settler needs from the consumer it settles for. Each
// method makes one attempt; the Settler retries a failed DeadLetter or
// Reply until it succeeds or the Settler stops.
type Sink interface {
	// Redeliver sends r to the consumer again (r.Attempt is not yet
	// incremented). An error means the consumer is stopping.
	Redeliver(ctx context.Context, r *Record) error
	// WriteDeadLetter writes dl, r's dead letter, to the DLQ. It may shrink
	// dl before failing (a payload Kafka refuses whole).
	WriteDeadLetter(ctx context.Context, r *Record, dl *kafkapipe.DeadLetter) error
	// Reply publishes the device's reply to r.ReplyTopic.
	Reply(ctx context.Context, r *Record, payload []byte) error
	// Settled ACKs r in the consumer's window: d is its terminal outcome
	// (Commit or DeadLetter), its dead letter and reply already done. It
	// must not block: it may run on the goroutine that called Settle.
	Settled(r *Record, d Decision)
}

// Config configures a Settler.
type Config struct {
	Policy
	// Finishers is how many dead letters and replies are written at once:
	// a reply publish waits for the broker's PUBACK, so with fewer finishers
	// than records in flight the round trips, not the CPU, cap throughput.
	// They run only while there is work: an idle node runs none. Default:
	// 1. The Settler does not bound the records it holds: the consumer's
	// window does (only records in it are settled).
	Finishers int
	// DLQTopic and MaxMessageBytes shape dead letters: a dead letter keeps
	// as much of the payload as one record can carry.
	DLQTopic        string
	MaxMessageBytes int
	// WantReply is false where devices get no reply from this path.
	WantReply bool
}

// Settler carries out Decisions. Settle and DeadLetter are safe for
// concurrent use; Run is called once.
type Settler struct {
	cfg  Config
	sink Sink
	log  *slog.Logger

	mu     sync.Mutex
	finish []job // dead letters and replies to write, oldest first
	// A finisher goroutine is started when a job finds none free, up to
	// cfg.Finishers; one that has had no job for finisherIdle returns.
	running   int             // finishers started and not returned
	free      int             // of them, those holding no job
	finishUp  chan struct{}   // 1-buffered: wakes a free finisher
	ctx       context.Context // Run's, while it runs: finishers start only then
	finishers sync.WaitGroup

	later *schedule.Later[job] // redeliveries by due time
}

type job struct {
	r *Record
	d Decision
}

// Option configures optional hooks.
type Option func(*Settler)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *Settler) { s.log = l } }

// New returns a Settler for one consumer window. It does no I/O.
func New(cfg Config, sink Sink, opts ...Option) *Settler {
	cfg.Policy = cfg.Policy.withDefaults()
	cfg.Finishers = max(cfg.Finishers, 1)
	s := &Settler{cfg: cfg, sink: sink, log: slog.Default(), finishUp: make(chan struct{}, 1), later: schedule.NewLater[job]()}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Settle decides r's next step after answer a and queues it; it returns
// the Decision for the caller's metrics. It never blocks, even after the
// consumer stopped taking new records (a draining consumer still wants its
// window settled).
func (s *Settler) Settle(r *Record, a Answer) Decision {
	d := s.cfg.Policy.Decide(r, a, s.cfg.WantReply && r.ReplyTopic != "")
	s.queue(r, d)
	return d
}

// Expire settles r, a request no backend was sent within maxAge of its
// receipt (Policy.Expired), and returns the Decision. It never blocks.
func (s *Settler) Expire(r *Record, maxAge time.Duration) Decision {
	d := s.cfg.Policy.Expired(r, maxAge, s.cfg.WantReply && r.ReplyTopic != "")
	s.queue(r, d)
	return d
}

// DeadLetter settles r by dead-lettering it, without a reply: a record
// that cannot be delivered at all (not an envelope). It never blocks.
func (s *Settler) DeadLetter(r *Record, reason, detail string) {
	s.queue(r, Decision{Action: DeadLetter, Reason: reason, Detail: detail})
}

func (s *Settler) queue(r *Record, d Decision) {
	if d.Action == Commit && len(d.Reply) == 0 {
		s.sink.Settled(r, d) // nothing to write first: ACK it at once
		return
	}
	if d.Action == Redeliver {
		s.later.Push(time.Now().Add(d.Delay), job{r: r, d: d})
		return
	}
	s.mu.Lock()
	s.finish = append(s.finish, job{r: r, d: d})
	s.startFinishers()
	s.mu.Unlock()
	signal(s.finishUp)
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default: // already signalled
	}
}

// finisherIdle is how long a finisher waits for a job before it returns:
// at a steady rate the same few run, and an idle node runs none.
const finisherIdle = 5 * time.Second

// startFinishers starts a finisher for each job no free finisher will
// take, up to cfg.Finishers, while Run runs. s.mu is held.
func (s *Settler) startFinishers() {
	for s.ctx != nil && len(s.finish) > s.free && s.running < s.cfg.Finishers {
		s.running++
		s.free++
		ctx := s.ctx
		s.finishers.Go(func() { s.finisher(ctx) })
	}
}

// Run writes dead letters, publishes replies, ACKs settled records and
// redelivers failed ones when their backoff is due, until ctx ends. What
// is queued then stays un-ACKed. Run blocks until its goroutines return.
func (s *Settler) Run(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	s.startFinishers() // for what was queued before Run
	s.mu.Unlock()
	// Redeliveries go back to the consumer when due; an error means it is
	// stopping.
	s.later.Run(ctx, func(j job) bool { return s.sink.Redeliver(ctx, j.r) == nil })
	s.mu.Lock()
	s.ctx = nil // no finisher starts from here
	s.mu.Unlock()
	s.finishers.Wait()
}

// next takes the oldest job for a finisher, waiting up to finisherIdle for
// one; done says the finisher finished one since it last asked. False: no
// job came, or ctx ended, and the finisher returns.
func (s *Settler) next(ctx context.Context, done bool, idle *time.Timer) (job, bool) {
	s.mu.Lock()
	if done {
		s.free++
	}
	for len(s.finish) == 0 {
		s.mu.Unlock()
		idle.Reset(finisherIdle)
		woken := true
		select {
		case <-s.finishUp:
		case <-idle.C:
			woken = false
		case <-ctx.Done():
			woken = false
		}
		s.mu.Lock()
		if !woken && len(s.finish) == 0 {
			s.free--
			s.running--
			s.finish = nil // let a large backing array go
			s.mu.Unlock()
			return job{}, false
		}
	}
	j := s.finish[0]
	s.finish[0] = job{}
	s.finish = s.finish[1:]
	s.free--
	more := len(s.finish) > 0
	s.mu.Unlock()
	if more {
		signal(s.finishUp) // another free finisher, for the next job
	}
	return j, true
}

// finisher writes jobs' dead letters and replies and ACKs their records
// until it has had no job for finisherIdle or ctx ends.
func (s *Settler) finisher(ctx context.Context) {
	idle := time.NewTimer(finisherIdle)
	defer idle.Stop()
	done := false
	for {
		j, ok := s.next(ctx, done, idle)
		if !ok {
			return
		}
		if !s.finishJob(ctx, j) {
			s.mu.Lock()
			s.running-- // stopping: j stays un-ACKed
			s.mu.Unlock()
			return
		}
		done = true
	}
}

// finishJob writes j's dead letter and reply, then ACKs its record; false
// if ctx ended first.
func (s *Settler) finishJob(ctx context.Context, j job) bool {
	if j.d.Action == DeadLetter {
		dl := s.deadLetter(j)
		if !s.retry(ctx, "dead-letter", j.r, func() error { return s.sink.WriteDeadLetter(ctx, j.r, dl) }) {
			return false
		}
	}
	if len(j.d.Reply) > 0 && !s.retry(ctx, "reply", j.r, func() error {
		return s.sink.Reply(ctx, j.r, j.d.Reply)
	}) {
		return false
	}
	s.sink.Settled(j.r, j.d)
	return true
}

// deadLetter builds j's dead letter; it is built once per record, so a
// retry after WriteDeadLetter shrank it sends the shrunken one.
func (s *Settler) deadLetter(j job) *kafkapipe.DeadLetter {
	payload := j.r.Payload
	if payload == nil && j.r.Envelope != nil {
		payload, _ = proto.Marshal(j.r.Envelope)
	}
	return &kafkapipe.DeadLetter{Topic: s.cfg.DLQTopic, DeviceID: j.r.DeviceID, Source: j.r.Source, Payload: payload,
		Reason: j.d.Reason, Detail: j.d.Detail, Keep: s.cfg.MaxMessageBytes - kafkapipe.DeadLetterOverhead}
}

// retry calls fn until it succeeds or ctx ends (false). A failure is
// logged when it first happens and when its cause changes, not at every
// attempt (a refused login fails the same way for hours).
func (s *Settler) retry(ctx context.Context, what string, r *Record, fn func() error) bool {
	return schedule.RetryLogged(ctx, s.log, "settle: "+what, fn, "partition", r.Partition, "offset", r.Offset)
}
