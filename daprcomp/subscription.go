package daprcomp

import (
	"context"
	"strconv"
	"sync"
	"time"

	components "github.com/dapr/dapr/pkg/proto/components/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgebridge/edgebridge/ackwindow"
	"github.com/edgebridge/edgebridge/internal/schedule"
	"github.com/edgebridge/edgebridge/kafkapipe"
)

// Metadata keys on every message a subscriber receives.
const (
	MetaKafkaPartition = "kafka-partition"
	MetaKafkaOffset    = "kafka-offset"
	MetaAttempt        = "edgebridge-attempt" // 1 on the first delivery
)

// DLQ reasons of records a subscription dead-letters.
const (
	ReasonCorrupt     = "corrupt_envelope"
	ReasonAppFailures = "dapr_max_attempts"
)

// PullMessages is one subscription of one daprd: its first request names
// the topic, every later one ACKs a message. The stream is a member of the
// consumer group named by the instance's consumerID; it lives as long as
// the stream. When the stream breaks (daprd stopped or killed), what was
// ACKed is committed and the rest is redelivered to the next member — the
// same daprd once it is back.
func (s *Server) PullMessages(stream components.PubSub_PullMessagesServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	topic := first.GetTopic().GetName()
	if !kafkapipe.ValidTopic(topic) {
		return status.Errorf(codes.InvalidArgument, "subscribe: topic %q is not a valid Kafka topic name", topic)
	}
	set, ok := s.settingsOf(stream.Context())
	if !ok {
		return status.Error(codes.FailedPrecondition, "subscribe: Init was not called on this connection")
	}
	if set.consumerID == "" {
		return status.Error(codes.FailedPrecondition, "subscribe: no consumerID (set it in the component metadata or run daprd with an app id)")
	}
	if s.stopping.Err() != nil {
		return unavailable("subscribe: edgebridge is shutting down")
	}
	if err := s.ensureTopic(stream.Context(), topic); err != nil {
		return unavailable("subscribe: create topic %s: %v", topic, err)
	}
	sub := &subscription{
		srv:     s,
		set:     set,
		topic:   topic,
		win:     ackwindow.New(set.window),
		out:     make(chan *delivery, set.window),
		later:   make(chan *delivery, set.window),
		pending: make(map[string]*delivery),
	}
	return sub.run(stream)
}

// subscription moves records from Kafka to one PullMessages stream.
// A record is in exactly one place at a time: out (to send), pending (sent,
// waiting for daprd's ACK) or later (redelivery or dead-letter due); each
// holds at most the window, so handing over never blocks for long.
type subscription struct {
	srv   *Server
	set   settings
	topic string
	win   *ackwindow.Window

	out   chan *delivery
	later chan *delivery

	mu      sync.Mutex
	seq     uint64
	pending map[string]*delivery // by message id
}

// delivery is one record on its way to the app.
type delivery struct {
	part        int32
	offset      int64
	key         []byte
	data        []byte
	contentType string
	attempt     int       // deliveries so far
	due         time.Time // when it is sent again or dead-lettered (later); zero: at once
	deadLetter  string    // DLQ reason: write it to the DLQ instead (later)
	detail      string
}

func (sub *subscription) run(stream components.PubSub_PullMessagesServer) error {
	s := sub.srv
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()

	consumer, err := kafkapipe.NewConsumer(kafkapipe.ConsumerConfig{
		Brokers:        s.cfg.Brokers,
		Security:       s.cfg.Security,
		GroupID:        sub.set.consumerID,
		Topic:          sub.topic,
		CommitInterval: s.cfg.CommitInterval,
		DrainTimeout:   s.cfg.DrainTimeout,
		SessionTimeout: s.cfg.SessionTimeout,
		StartNewest:    sub.set.startNewest,
	}, sub.win, sub.handle, kafkapipe.WithLogger(s.log))
	if err != nil {
		return status.Errorf(codes.Internal, "subscribe: %v", err)
	}
	// The stream gone means nobody will ACK what is in flight: commit what
	// was ACKed and leave the group at once.
	stopAbandon := context.AfterFunc(ctx, consumer.Abandon)
	defer stopAbandon()
	// Consuming stops when the stream ends or the server stops; the stream
	// stays open while the consumer drains.
	consume, stopConsume := context.WithCancel(ctx)
	defer stopConsume()
	stopOnStopping := context.AfterFunc(s.stopping, stopConsume)
	defer stopOnStopping()

	// Receiving ACKs must not hold up the handler's return (grpc-go ends a
	// blocked Recv only after the handler returns); Run waits for it.
	s.streams.Go(func() { sub.receive(stream, cancel) })
	var wg sync.WaitGroup
	wg.Go(func() { sub.send(ctx, stream, cancel) })
	wg.Go(func() { sub.redeliver(ctx) })

	s.log.Info("daprcomp: subscription opened", "topic", sub.topic, "consumer_id", sub.set.consumerID)
	s.event(EventSubscribed, sub.topic)
	defer s.event(EventUnsubscribed, sub.topic)
	err = consumer.Run(consume)
	cancel()
	wg.Wait()
	s.log.Info("daprcomp: subscription closed", "topic", sub.topic, "consumer_id", sub.set.consumerID,
		"in_flight", sub.win.InFlight())
	return err
}

// handle is the consumer's Handler: the record is in the window already.
func (sub *subscription) handle(ctx context.Context, m kafkapipe.Message) error {
	d := &delivery{part: m.Partition, offset: m.Offset, key: m.Key}
	data, ct, err := sub.srv.toEvent(m)
	if err != nil {
		d.deadLetter, d.detail, d.data = ReasonCorrupt, err.Error(), m.Value
		return put(ctx, sub.later, d)
	}
	d.data, d.contentType = data, ct
	return put(ctx, sub.out, d)
}

func put(ctx context.Context, ch chan<- *delivery, d *delivery) error {
	select {
	case ch <- d:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send is the stream's only sender.
func (sub *subscription) send(ctx context.Context, stream components.PubSub_PullMessagesServer, broken context.CancelFunc) {
	for {
		var d *delivery
		select {
		case d = <-sub.out:
		case <-ctx.Done():
			return
		}
		d.attempt++
		sub.mu.Lock()
		sub.seq++
		id := strconv.FormatUint(sub.seq, 10)
		sub.pending[id] = d
		sub.mu.Unlock()
		err := stream.Send(&components.PullMessagesResponse{
			Data:        d.data,
			TopicName:   sub.topic,
			ContentType: d.contentType,
			Id:          id,
			Metadata: map[string]string{
				MetaPartitionKey:   string(d.key),
				MetaKafkaPartition: strconv.Itoa(int(d.part)),
				MetaKafkaOffset:    strconv.FormatInt(d.offset, 10),
				MetaAttempt:        strconv.Itoa(d.attempt),
			},
		})
		if err != nil {
			broken()
			return
		}
		if d.attempt == 1 {
			sub.srv.event(EventDelivered, sub.topic)
		} else {
			sub.srv.event(EventRedelivered, sub.topic)
		}
	}
}

// receive is the stream's only receiver: it takes daprd's ACKs.
func (sub *subscription) receive(stream components.PubSub_PullMessagesServer, broken context.CancelFunc) {
	defer broken()
	for {
		req, err := stream.Recv()
		if err != nil {
			return
		}
		sub.mu.Lock()
		d := sub.pending[req.GetAckMessageId()]
		delete(sub.pending, req.GetAckMessageId())
		sub.mu.Unlock()
		if d == nil {
			continue // unknown or already ACKed: nothing to do
		}
		if req.GetAckError() == nil {
			sub.srv.event(EventAcked, sub.topic)
			sub.win.Ack(d.part, d.offset) // false if a rebalance took the partition: fine
			continue
		}
		sub.srv.event(EventFailed, sub.topic)
		// A redelivery or dead letter is due; later has room for every
		// record in the window, so this never blocks for long.
		if d.attempt >= sub.set.maxAttempts {
			d.deadLetter, d.detail, d.due = ReasonAppFailures, req.GetAckError().GetMessage(), time.Time{}
		} else {
			d.due = time.Now().Add(sub.set.retryBackoff << min(d.attempt-1, 5))
		}
		if put(stream.Context(), sub.later, d) != nil {
			return
		}
	}
}

// redeliver sends failed messages again when their backoff is due and
// writes dead letters (due at once), then ACKs them in the window.
func (sub *subscription) redeliver(ctx context.Context) {
	schedule.Run(ctx, sub.later, func(d *delivery) time.Time { return d.due }, func(d *delivery) bool {
		if d.deadLetter != "" {
			return sub.writeDeadLetter(ctx, d)
		}
		return put(ctx, sub.out, d) == nil
	})
}

func (sub *subscription) writeDeadLetter(ctx context.Context, d *delivery) bool {
	s := sub.srv
	rec := kafkapipe.DeadLetter{Topic: s.cfg.DLQTopic, DeviceID: string(d.key), Source: sub.topic, Payload: d.data,
		Reason: d.deadLetter, Detail: d.detail, Keep: s.cfg.MaxMessageBytes - kafkapipe.DeadLetterOverhead}.Record()
	write := func() error { return s.deps.Kafka.Write(ctx, rec) }
	if !schedule.Retry(ctx, write, func(err error) {
		s.log.Warn("daprcomp: dead-letter failed; retrying", "topic", sub.topic, "partition", d.part, "offset", d.offset, "err", err)
	}) {
		return false // stays un-ACKed: redelivered to the next member
	}
	s.log.Info("daprcomp: dead-lettered", "topic", sub.topic, "partition", d.part, "offset", d.offset,
		"reason", d.deadLetter, "consumer_id", sub.set.consumerID)
	s.event(EventDeadLettered, sub.topic)
	sub.win.Ack(d.part, d.offset)
	return true
}
