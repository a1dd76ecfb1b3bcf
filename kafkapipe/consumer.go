package kafkapipe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/edgebridge/edgebridge/ackwindow"
	"github.com/edgebridge/edgebridge/internal/defaults"
)

// ConsumerConfig configures a Consumer. Zero values mean the default.
type ConsumerConfig struct {
	Brokers []string // Required.
	GroupID string   // Required.
	Topic   string   // Required.
	// CommitInterval is how often acknowledged floors are committed. Default: 200ms.
	CommitInterval time.Duration
	// DrainTimeout bounds how long a stopping consumer waits for in-flight
	// records to be acknowledged before it commits and leaves. Default: 30s.
	DrainTimeout time.Duration
	// SessionTimeout of the group membership. Default: 6s.
	SessionTimeout time.Duration
	// HeartbeatInterval of the group membership. Default: a fifth of
	// SessionTimeout.
	HeartbeatInterval time.Duration
	// MaxWait bounds a fetch long-poll. Default: 250ms.
	MaxWait time.Duration
	// StartNewest makes a group with no committed offset start at the end
	// of each partition instead of the beginning. Default: false (oldest:
	// records written before the group first joined are delivered too).
	StartNewest bool
	// Security: TLS and SASL to the brokers.
	Security Security
	// MemberFile, if set, is where the consumer remembers its group member
	// id: the next run removes that member from the group before joining,
	// so a restart after a crash does not wait SessionTimeout for the
	// dead member's partitions (see member.go). Only for a group this
	// consumer alone joins under this file. Default: none.
	MemberFile string
	// HandedFile, if set, is where the consumer remembers which records it
	// may have handed to the Handler, so that Message.Redelivered holds
	// across restarts (see handed.go). Only for a group this consumer alone
	// joins under this file. Default: none (Redelivered is then set only
	// for records handed earlier in the same run).
	HandedFile string
}

// Defaults of the consumer and the producer: package config gives the
// product's settings the same values by these names.
const (
	DefaultCommitInterval = 200 * time.Millisecond
	DefaultDrainTimeout   = 30 * time.Second
	// DefaultSessionTimeout is the least Kafka brokers accept by default
	// (group.min.session.timeout.ms), the embedded broker too.
	DefaultSessionTimeout = 6 * time.Second
	// DefaultMaxMessageBytes is Kafka's default message.max.bytes.
	DefaultMaxMessageBytes = 1 << 20
	DefaultWriteTimeout    = 10 * time.Second
	// DefaultPartitions of the topics the bridge creates.
	DefaultPartitions = 8
)

// DefaultHeartbeatInterval is a fifth of the session timeout.
func DefaultHeartbeatInterval(session time.Duration) time.Duration { return session / 5 }

func (c ConsumerConfig) withDefaults() ConsumerConfig {
	defaults.Positive(&c.CommitInterval, DefaultCommitInterval)
	defaults.Positive(&c.DrainTimeout, DefaultDrainTimeout)
	defaults.Positive(&c.SessionTimeout, DefaultSessionTimeout)
	defaults.Positive(&c.HeartbeatInterval, DefaultHeartbeatInterval(c.SessionTimeout))
	defaults.Positive(&c.MaxWait, 250*time.Millisecond)
	return c
}

// Message is one fetched record handed to the Handler.
type Message struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   []kafka.Header
	// Redelivered is set when the record may have been handed to a Handler
	// before: earlier in this run (a rebalance), or, with HandedFile, by an
	// earlier run. False means it never was.
	Redelivered bool
}

// Handler takes a fetched record that is already in the window. It is called
// from one goroutine per partition, in offset order, and may block (that is
// the backpressure). The record stays in the window until someone calls
// Window.Ack for it; an error from Handler stops the consumer.
type Handler func(ctx context.Context, m Message) error

// Consumer reads a topic through a consumer group with explicit generations.
// On each rebalance it commits what was acknowledged, drops the in-flight
// records of the old assignment from the window (Kafka redelivers them) and
// starts again from the committed offsets. Commits never move backwards.
type Consumer struct {
	cfg      ConsumerConfig
	win      *ackwindow.Window
	handle   Handler
	log      *slog.Logger
	onCommit func(partition int32, offset int64)

	mu        sync.Mutex
	committed map[int32]int64       // last committed offset per partition in this generation
	joined    atomic.Bool           // a generation is running
	joinErr   atomic.Pointer[error] // why the last join failed; nil after a join

	member string       // the member id last written to MemberFile; Run's goroutine only
	handed *handedMarks // set by Run before the first fetch

	adminMu     sync.RWMutex    // held by Lag while it uses admin
	admin       *kafka.Client   // Lag's
	closeAdmin  func()          // closes admin's idle connections
	adminClosed bool            // Run ended: Lag no longer asks
	abandoned   context.Context // done once Abandon was called
	abandon     context.CancelFunc
}

// ConsumerOption configures optional hooks.
type ConsumerOption func(*Consumer)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) ConsumerOption { return func(c *Consumer) { c.log = l } }

// WithCommitHook is called after each successful commit of a partition.
func WithCommitHook(fn func(partition int32, offset int64)) ConsumerOption {
	return func(c *Consumer) { c.onCommit = fn }
}

// NewConsumer returns a Consumer; it does no I/O.
func NewConsumer(cfg ConsumerConfig, win *ackwindow.Window, handle Handler, opts ...ConsumerOption) (*Consumer, error) {
	var errs []error
	if len(cfg.Brokers) == 0 {
		errs = append(errs, errors.New("kafkapipe: no brokers"))
	}
	if cfg.GroupID == "" {
		errs = append(errs, errors.New("kafkapipe: no group id"))
	}
	if cfg.Topic == "" {
		errs = append(errs, errors.New("kafkapipe: no topic"))
	}
	if win == nil || handle == nil {
		errs = append(errs, errors.New("kafkapipe: window and handler are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c := &Consumer{cfg: cfg.withDefaults(), win: win, handle: handle, log: slog.Default()}
	c.abandoned, c.abandon = context.WithCancel(context.Background())
	// Lag's client, kept for the consumer's life: polling every few
	// seconds must not dial (and log in) each time.
	c.admin, c.closeAdmin = adminClient(c.cfg.Brokers, c.cfg.Security, 5*time.Second)
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Abandon makes a stopping Run skip waiting for the window: whoever would
// acknowledge the records in flight is gone, so Run commits what was
// acknowledged and leaves the group at once; Kafka redelivers the rest to
// the next member. Call it before or after ctx ends. Safe for concurrent use.
func (c *Consumer) Abandon() { c.abandon() }

// Run consumes until ctx ends, then stops fetching, waits up to DrainTimeout
// for the window to empty, commits the floors and leaves the group. It
// blocks until all of that is done.
func (c *Consumer) Run(ctx context.Context) error {
	handed, err := openHandedMarks(c.cfg.HandedFile, c.cfg.Topic, c.log, c.endOffset)
	if err != nil {
		return err
	}
	c.handed = handed
	c.leavePredecessor(ctx)
	start := kafka.FirstOffset
	if c.cfg.StartNewest {
		start = kafka.LastOffset
	}
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                    c.cfg.GroupID,
		Brokers:               c.cfg.Brokers,
		Dialer:                c.cfg.Security.dialer(),
		Topics:                []string{c.cfg.Topic},
		StartOffset:           start,
		SessionTimeout:        c.cfg.SessionTimeout,
		HeartbeatInterval:     c.cfg.HeartbeatInterval,
		RebalanceTimeout:      c.cfg.SessionTimeout,
		JoinGroupBackoff:      500 * time.Millisecond,
		WatchPartitionChanges: true,
	})
	if err != nil {
		return fmt.Errorf("kafkapipe: consumer group: %w", err)
	}
	defer group.Close()
	defer func() { // after any Lag in flight; none starts after it
		c.adminMu.Lock()
		defer c.adminMu.Unlock()
		c.adminClosed = true
		c.closeAdmin()
	}()
	for {
		gen, err := group.Next(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			c.joinErr.Store(&err)
			c.log.Warn("kafkapipe: join group", "group", c.cfg.GroupID, "err", err)
			continue // Next backs off internally
		}
		c.joinErr.Store(nil)
		c.rememberMember(gen.MemberID)
		done := make(chan struct{})
		gen.Start(func(genCtx context.Context) {
			defer close(done)
			c.runGeneration(ctx, genCtx, gen)
		})
		<-done
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (c *Consumer) runGeneration(ctx, genCtx context.Context, gen *kafka.Generation) {
	assigned := gen.Assignments[c.cfg.Topic]
	parts := make([]int32, len(assigned))
	c.mu.Lock()
	c.committed = make(map[int32]int64, len(assigned))
	for i, a := range assigned {
		parts[i] = int32(a.ID)
		c.committed[int32(a.ID)] = a.Offset
		c.win.Assign(int32(a.ID), a.Offset)
	}
	c.mu.Unlock()
	for _, p := range parts {
		c.handed.start(genCtx, p) // before it reports joined
	}
	c.joined.Store(true)
	defer c.joined.Store(false)
	c.log.Info("kafkapipe: generation started", "group", c.cfg.GroupID, "generation", gen.ID, "partitions", parts)

	// Fetching stops when the generation ends (rebalance) or ctx ends (shutdown).
	fetchCtx, cancelFetch := context.WithCancel(genCtx)
	stop := context.AfterFunc(ctx, cancelFetch)
	defer stop()
	var wg sync.WaitGroup
	for _, a := range assigned {
		wg.Go(func() {
			c.fetch(fetchCtx, int32(a.ID), a.Offset)
			cancelFetch() // one partition stopped: end the generation and rejoin
		})
	}
	ticker := time.NewTicker(c.cfg.CommitInterval)
	defer ticker.Stop()
	commitUntil := func(done <-chan struct{}) {
		for {
			select {
			case <-done:
				return
			case <-ticker.C:
				c.commit(gen)
			}
		}
	}
	commitUntil(fetchCtx.Done())
	wg.Wait()

	if genCtx.Err() == nil {
		// Graceful stop: the generation is still ours, so let the backends
		// finish the window and commit everything they acknowledged.
		drainCtx, cancel := context.WithTimeout(genCtx, c.cfg.DrainTimeout)
		stopDrain := context.AfterFunc(c.abandoned, cancel)
		emptied := make(chan struct{})
		go func() { _ = c.win.WaitEmpty(drainCtx); close(emptied) }()
		commitUntil(emptied)
		stopDrain()
		cancel()
		if n := c.win.InFlight(); n > 0 {
			c.log.Warn("kafkapipe: drain timed out; un-acknowledged records will be redelivered", "in_flight", n)
		}
	}
	c.commit(gen)
	dropped := c.win.Revoke(parts...)
	c.log.Info("kafkapipe: generation ended", "generation", gen.ID, "dropped_in_flight", dropped)
}

// commit sends every floor that moved forward since the last commit.
func (c *Consumer) commit(gen *kafka.Generation) {
	floors := c.win.TakeCommits()
	if len(floors) == 0 {
		return
	}
	c.mu.Lock()
	offsets := make(map[int]int64, len(floors))
	for p, off := range floors {
		if last, ok := c.committed[p]; ok && off > last {
			offsets[int(p)] = off
		}
	}
	c.mu.Unlock()
	if len(offsets) == 0 {
		return
	}
	if err := gen.CommitOffsets(map[string]map[int]int64{c.cfg.Topic: offsets}); err != nil {
		// The floors stay in the window's past; the next commit carries
		// newer ones, and a lost commit only means redelivery.
		c.log.Warn("kafkapipe: commit", "topic", c.cfg.Topic, "err", err)
		return
	}
	c.mu.Lock()
	for p, off := range offsets {
		c.committed[int32(p)] = off
	}
	c.mu.Unlock()
	if c.onCommit != nil {
		for p, off := range offsets {
			c.onCommit(int32(p), off)
		}
	}
}

func (c *Consumer) fetch(ctx context.Context, part int32, offset int64) {
	cfg := kafka.ReaderConfig{
		Brokers:         c.cfg.Brokers,
		Dialer:          c.cfg.Security.dialer(),
		Topic:           c.cfg.Topic,
		Partition:       int(part),
		MinBytes:        1,
		MaxBytes:        4 << 20,
		MaxWait:         c.cfg.MaxWait,
		QueueCapacity:   c.win.Cap(),
		ReadLagInterval: -1,
		ReadBackoffMin:  10 * time.Millisecond,
		ReadBackoffMax:  500 * time.Millisecond,
	}
	if err := cfg.Validate(); err != nil {
		c.log.Error("kafkapipe: reader config", "err", err)
		return
	}
	r := kafka.NewReader(cfg)
	defer r.Close()
	if err := r.SetOffset(offset); err != nil {
		c.log.Error("kafkapipe: set offset", "partition", part, "offset", offset, "err", err)
		return
	}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("kafkapipe: fetch", "topic", c.cfg.Topic, "partition", part, "err", err)
			}
			return
		}
		if err := c.win.Add(ctx, part, m.Offset, m.Time); err != nil {
			return
		}
		redelivered, err := c.handed.hand(ctx, part, m.Offset)
		if err != nil {
			return
		}
		msg := Message{Topic: m.Topic, Partition: part, Offset: m.Offset, Key: m.Key, Value: m.Value, Headers: m.Headers,
			Redelivered: redelivered}
		if err := c.handle(ctx, msg); err != nil {
			if ctx.Err() == nil {
				c.log.Error("kafkapipe: handler", "partition", part, "offset", m.Offset, "err", err)
			}
			return
		}
	}
}

// Joined reports whether the consumer is a member of a running group
// generation: it owns its partitions (it may have none, when the group has
// more members than partitions). A restarted consumer is not joined until
// the group let go of its crashed predecessor (up to SessionTimeout).
func (c *Consumer) Joined() bool { return c.joined.Load() }

// JoinError is why the last attempt to join the group failed (a session
// timeout the broker refuses, for one); nil once a join succeeded.
func (c *Consumer) JoinError() error {
	if p := c.joinErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Lag returns, for each partition of the current generation, how many
// records the group has not committed yet: the partition's end offset
// minus the committed offset. It asks the brokers for the end offsets
// (one ListOffsets request); it is safe for concurrent use with Run.
func (c *Consumer) Lag(ctx context.Context) (map[int32]int64, error) {
	c.mu.Lock()
	committed := make(map[int32]int64, len(c.committed))
	for p, off := range c.committed {
		committed[p] = off
	}
	c.mu.Unlock()
	if len(committed) == 0 {
		return nil, nil
	}
	reqs := make([]kafka.OffsetRequest, 0, 2*len(committed))
	for p := range committed {
		reqs = append(reqs, kafka.FirstOffsetOf(int(p)), kafka.LastOffsetOf(int(p)))
	}
	c.adminMu.RLock()
	defer c.adminMu.RUnlock()
	if c.adminClosed { // a call now would open connections nobody closes
		return nil, errors.New("kafkapipe: consumer stopped")
	}
	res, err := c.admin.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{c.cfg.Topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("kafkapipe: list offsets: %w", err)
	}
	lag := make(map[int32]int64, len(committed))
	for _, po := range res.Topics[c.cfg.Topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("kafkapipe: list offsets of partition %d: %w", po.Partition, po.Error)
		}
		off, ok := committed[int32(po.Partition)]
		switch {
		case !ok:
			continue
		case off == kafka.FirstOffset: // nothing committed yet: from the start
			off = po.FirstOffset
		case off == kafka.LastOffset: // nothing committed yet: from the end
			off = po.LastOffset
		}
		lag[int32(po.Partition)] = max(po.LastOffset-off, 0)
	}
	return lag, nil
}
