package daprcomp

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	components "github.com/dapr/dapr/pkg/proto/components/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgebridge/edgebridge/ackwindow"
	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/settle"
)

// Metadata keys on every message a subscriber receives.
const (
	MetaKafkaPartition = "kafka-partition"
	MetaKafkaOffset    = "kafka-offset"
	MetaAttempt        = "edgebridge-attempt" // 1 on the first delivery
)

// DLQ reasons of records a subscription dead-letters.
const (
	ReasonCorrupt     = v1.ReasonCorruptEnvelope
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
		out:     make(chan *settle.Record, set.window),
		pending: make(map[string]*settle.Record),
	}
	sub.settler = settle.New(settle.Config{
		Policy:          settle.Policy{MaxAttempts: set.maxAttempts, Backoff: set.retryBackoff, ExhaustedReason: ReasonAppFailures},
		Finishers:       subscriptionFinishers,
		DLQTopic:        s.cfg.DLQTopic,
		MaxMessageBytes: s.cfg.MaxMessageBytes,
		// No device replies: Dapr apps publish their own to the reply topic.
	}, subscriptionSink{sub}, settle.WithLogger(s.log))
	return sub.run(stream)
}

// subscriptionFinishers write a subscription's dead letters and ACK its
// settled records; with no replies to wait for, a few keep up.
const subscriptionFinishers = 4

// subscription moves records from Kafka to one PullMessages stream.
// A record is in exactly one place at a time: out (to send), pending (sent,
// waiting for daprd's ACK) or the settler (redelivery, dead letter or
// window ACK due); each holds at most the window, so handing over never
// blocks for long.
type subscription struct {
	srv     *Server
	set     settings
	topic   string
	win     *ackwindow.Window
	settler *settle.Settler

	out chan *settle.Record

	mu      sync.Mutex
	seq     uint64
	pending map[string]*settle.Record // by message id
}

func (sub *subscription) run(stream components.PubSub_PullMessagesServer) error {
	s := sub.srv
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()

	consumer, err := kafkapipe.NewConsumer(kafkapipe.ConsumerConfig{
		Brokers:           s.cfg.Brokers,
		Security:          s.cfg.Security,
		GroupID:           sub.set.consumerID,
		Topic:             sub.topic,
		CommitInterval:    s.cfg.CommitInterval,
		DrainTimeout:      s.cfg.DrainTimeout,
		SessionTimeout:    s.cfg.SessionTimeout,
		HeartbeatInterval: s.cfg.HeartbeatInterval,
		StartNewest:       sub.set.startNewest,
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
	wg.Go(func() { sub.settler.Run(ctx) })

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
	r := &settle.Record{Partition: m.Partition, Offset: m.Offset, DeviceID: string(m.Key), Source: sub.topic, First: time.Now()}
	data, ct, err := sub.srv.toEvent(m)
	if err != nil {
		r.Payload = m.Value
		sub.settler.DeadLetter(r, ReasonCorrupt, err.Error())
		return nil
	}
	r.Payload, r.ContentType = data, ct
	return put(ctx, sub.out, r)
}

func put(ctx context.Context, ch chan<- *settle.Record, d *settle.Record) error {
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
		var d *settle.Record
		select {
		case d = <-sub.out:
		case <-ctx.Done():
			return
		}
		d.Attempt++
		sub.mu.Lock()
		sub.seq++
		id := strconv.FormatUint(sub.seq, 10)
		sub.pending[id] = d
		sub.mu.Unlock()
		err := stream.Send(&components.PullMessagesResponse{
			Data:        d.Payload,
			TopicName:   sub.topic,
			ContentType: d.ContentType,
			Id:          id,
			Metadata: map[string]string{
				MetaPartitionKey:   d.DeviceID,
				MetaKafkaPartition: strconv.Itoa(int(d.Partition)),
				MetaKafkaOffset:    strconv.FormatInt(d.Offset, 10),
				MetaAttempt:        strconv.Itoa(d.Attempt),
			},
		})
		if err != nil {
			broken()
			return
		}
		if d.Attempt == 1 {
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
		// The settler ACKs it in the window (false there if a rebalance
		// took the partition: fine), or redelivers or dead-letters it.
		answer := settle.Answer{Outcome: v1.Outcome_OUTCOME_OK}
		if e := req.GetAckError(); e != nil {
			answer = settle.Answer{Outcome: v1.Outcome_OUTCOME_RETRY, Reason: e.GetMessage()}
			sub.srv.event(EventFailed, sub.topic)
		} else {
			sub.srv.event(EventAcked, sub.topic)
		}
		sub.settler.Settle(d, answer)
	}
}

// subscriptionSink is a subscription's side of its Settler.
type subscriptionSink struct{ sub *subscription }

func (s subscriptionSink) Redeliver(ctx context.Context, r *settle.Record) error {
	return put(ctx, s.sub.out, r)
}

func (s subscriptionSink) WriteDeadLetter(ctx context.Context, _ *settle.Record, dl *kafkapipe.DeadLetter) error {
	return s.sub.srv.deps.Kafka.Write(ctx, dl.Record())
}

func (s subscriptionSink) Reply(context.Context, *settle.Record, []byte) error {
	return errors.New("daprcomp: Dapr apps publish their own replies") // never called: no reply topic
}

func (s subscriptionSink) Settled(r *settle.Record, d settle.Decision) {
	sub := s.sub
	if d.Action == settle.DeadLetter {
		sub.srv.log.Info("daprcomp: dead-lettered", "topic", sub.topic, "partition", r.Partition, "offset", r.Offset,
			"reason", d.Reason, "consumer_id", sub.set.consumerID)
		sub.srv.event(EventDeadLettered, sub.topic)
	}
	sub.win.Ack(r.Partition, r.Offset)
}
