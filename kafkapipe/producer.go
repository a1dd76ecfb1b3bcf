// Package kafkapipe is edgebridge's Kafka hop: a Producer that writes
// envelopes durably (acks=all, keyed by device id) and a Consumer that reads
// them through a consumer group and commits only the contiguous acknowledged
// floor kept by an ackwindow.Window.
//
// Both speak to Kafka through github.com/segmentio/kafka-go.
package kafkapipe

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// Header names set on every record the bridge writes.
const (
	HeaderMessageID   = "edgebridge-message-id"
	HeaderDeviceID    = "edgebridge-device-id"
	HeaderContentType = "content-type"
	HeaderSourceTopic = "edgebridge-source-topic"
	HeaderReason      = "edgebridge-dlq-reason"
	HeaderDetail      = "edgebridge-dlq-detail"
	// HeaderDeadLetteredAt is when a record was dead-lettered, Unix milliseconds.
	HeaderDeadLetteredAt = "edgebridge-dead-lettered-at"
)

// ProducerConfig configures a Producer. Zero values mean the default.
type ProducerConfig struct {
	// Brokers are the bootstrap addresses. Required.
	Brokers []string
	// MaxRequestBytes bounds the records of one produce request; a
	// partition's share of a Write that is larger goes out in several.
	// Default: 1 MiB (Kafka's default message.max.bytes).
	MaxRequestBytes int
	// WriteTimeout bounds one produce request. Default: 10s.
	WriteTimeout time.Duration
}

func (c ProducerConfig) withDefaults() ProducerConfig {
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = 1 << 20
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	return c
}

// Record is one record to produce.
type Record struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers []kafka.Header
}

// Producer writes records with RequiredAcks=all. It is safe for concurrent use.
//
// It batches nothing itself: each Write sends its records at once, one
// produce request per partition, all partitions in parallel, and returns
// when every request was acknowledged. Callers batch (the bridge writes what
// arrived while its previous write was in flight). kafka-go's Writer was
// the first choice, but it holds every partial batch for its BatchTimeout,
// and a timer under a millisecond fires after about one on an idle process
// (the Go runtime sleeps in epoll with millisecond resolution): a flat
// millisecond on every request. It also allocates room for BatchSize
// messages with each batch, which was half the bridge's allocations.
type Producer struct {
	cfg    ProducerConfig
	client *kafka.Client
	tr     *kafka.Transport
	// Keys are placed like kafka-go's Writer with its Hash balancer places
	// them, so partitions stay where earlier versions put them.
	balancer kafka.Hash

	mu         sync.Mutex
	partitions map[string]topicPartitions
}

type topicPartitions struct {
	ids     []int // sorted
	fetched time.Time
}

// partitionsTTL is how long a topic's partition list is trusted; a failed
// produce forgets it at once.
const partitionsTTL = 30 * time.Second

// NewProducer returns a Producer; it does no I/O.
func NewProducer(cfg ProducerConfig) (*Producer, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("kafkapipe: no brokers")
	}
	cfg = cfg.withDefaults()
	tr := &kafka.Transport{}
	return &Producer{
		cfg: cfg, tr: tr, partitions: map[string]topicPartitions{},
		client: &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: cfg.WriteTimeout, Transport: tr},
	}, nil
}

// request is one produce request: records of one partition, in Write order.
type request struct {
	topic     string
	partition int
	records   []kafka.Record
	bytes     int
}

// Write produces recs and returns once Kafka acknowledged all of them (all
// in-sync replicas), or with an error. On error some records may have been
// written; callers retry the whole batch and rely on downstream dedup.
// Records for the same key keep their order within one call.
func (p *Producer) Write(ctx context.Context, recs ...Record) error {
	if len(recs) == 0 {
		return nil
	}
	chains, err := p.plan(ctx, recs)
	if err != nil {
		return err
	}
	// Partitions in parallel; the requests of one partition one after the
	// other, so records keep their order.
	errs := make([]error, len(chains))
	run := func(i int) {
		for _, r := range chains[i] {
			if errs[i] = p.produce(ctx, r); errs[i] != nil {
				return
			}
		}
	}
	if len(chains) == 1 {
		run(0)
	} else {
		var wg sync.WaitGroup
		for i := range chains {
			wg.Go(func() { run(i) })
		}
		wg.Wait()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kafkapipe: write %d records: %w", len(recs), err)
	}
	return nil
}

// plan groups recs by partition, in order: one chain of requests per
// partition, each request at most MaxRequestBytes.
func (p *Producer) plan(ctx context.Context, recs []Record) ([][]*request, error) {
	type tp struct {
		topic string
		part  int
	}
	now := time.Now()
	chainOf := map[tp]int{}
	var chains [][]*request
	idsOf := map[string][]int{} // one metadata lookup per topic per Write
	for _, r := range recs {
		ids, ok := idsOf[r.Topic]
		if !ok {
			var err error
			if ids, err = p.partitionsOf(ctx, r.Topic); err != nil {
				return nil, err
			}
			idsOf[r.Topic] = ids
		}
		k := tp{r.Topic, p.balancer.Balance(kafka.Message{Key: r.Key}, ids...)}
		size := len(r.Key) + len(r.Value) + 64
		for _, h := range r.Headers {
			size += len(h.Key) + len(h.Value)
		}
		i, ok := chainOf[k]
		if !ok {
			i = len(chains)
			chainOf[k] = i
			chains = append(chains, nil)
		}
		var req *request
		if n := len(chains[i]); n > 0 && chains[i][n-1].bytes+size <= p.cfg.MaxRequestBytes {
			req = chains[i][n-1]
		} else {
			req = &request{topic: k.topic, partition: k.part}
			chains[i] = append(chains[i], req)
		}
		req.records = append(req.records, kafka.Record{
			Time: now, Key: kafka.NewBytes(r.Key), Value: kafka.NewBytes(r.Value), Headers: r.Headers,
		})
		req.bytes += size
	}
	return chains, nil
}

func (p *Producer) produce(ctx context.Context, r *request) error {
	res, err := p.client.Produce(ctx, &kafka.ProduceRequest{
		Topic: r.topic, Partition: r.partition, RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(r.records...),
	})
	if err == nil {
		err = res.Error
		for _, e := range res.RecordErrors {
			err = errors.Join(err, e)
		}
	}
	if err != nil {
		p.forget(r.topic) // the leader or the partitions may have changed
		return fmt.Errorf("%s[%d]: %w", r.topic, r.partition, err)
	}
	return nil
}

// partitionsOf returns the sorted partition ids of topic, from metadata
// fetched at most partitionsTTL ago.
func (p *Producer) partitionsOf(ctx context.Context, topic string) ([]int, error) {
	p.mu.Lock()
	tp, ok := p.partitions[topic]
	p.mu.Unlock()
	if ok && time.Since(tp.fetched) < partitionsTTL {
		return tp.ids, nil
	}
	md, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("kafkapipe: metadata of %s: %w", topic, err)
	}
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("kafkapipe: topic %s: %w", topic, t.Error)
		}
		ids := make([]int, 0, len(t.Partitions))
		for _, part := range t.Partitions {
			ids = append(ids, part.ID)
		}
		if len(ids) == 0 {
			break
		}
		slices.Sort(ids)
		p.mu.Lock()
		p.partitions[topic] = topicPartitions{ids: ids, fetched: time.Now()}
		p.mu.Unlock()
		return ids, nil
	}
	return nil, fmt.Errorf("kafkapipe: topic %s: %w", topic, kafka.UnknownTopicOrPartition)
}

func (p *Producer) forget(topic string) {
	p.mu.Lock()
	delete(p.partitions, topic)
	p.mu.Unlock()
}

// Close closes the producer's connections. Writes in progress fail.
func (p *Producer) Close() error {
	p.tr.CloseIdleConnections()
	return nil
}

// EnsureTopics creates the topics with the given partition count if they do
// not exist. Existing topics are left as they are.
func EnsureTopics(ctx context.Context, brokers []string, partitions int, topics ...string) error {
	client, done := adminClient(brokers, 10*time.Second)
	defer done()
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t, NumPartitions: partitions, ReplicationFactor: -1})
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("kafkapipe: create topics: %w", err)
	}
	var errs []error
	for t, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			errs = append(errs, fmt.Errorf("kafkapipe: create topic %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// Ping checks that a broker answers a metadata request.
func Ping(ctx context.Context, brokers []string) error {
	client, done := adminClient(brokers, 5*time.Second)
	defer done()
	if _, err := client.Metadata(ctx, &kafka.MetadataRequest{}); err != nil {
		return fmt.Errorf("kafkapipe: metadata: %w", err)
	}
	return nil
}

// adminClient returns a client with its own transport (not kafka-go's
// global pool), and a func that closes its connections.
func adminClient(brokers []string, timeout time.Duration) (*kafka.Client, func()) {
	tr := &kafka.Transport{}
	return &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: timeout, Transport: tr}, tr.CloseIdleConnections
}

// ValidTopic reports whether t follows Kafka's topic name rules.
func ValidTopic(t string) bool {
	if t == "" || len(t) > 249 || t == "." || t == ".." {
		return false
	}
	for _, r := range t {
		if !(r == '.' || r == '_' || r == '-' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

// ContentTypeEnvelope is the content-type header of the bridge's request
// records: each value is an edgebridge.v1.Envelope.
const ContentTypeEnvelope = "application/x-protobuf; messageType=edgebridge.v1.Envelope"

// Header returns the value of the first header named key, or nil.
func Header(hs []kafka.Header, key string) []byte {
	for _, h := range hs {
		if h.Key == key {
			return h.Value
		}
	}
	return nil
}

// DeadLetter builds the DLQ record of payload: the reason (a stable code)
// and detail go in headers, with the device and the topic it came from.
func DeadLetter(topic, deviceID, source string, payload []byte, reason, detail string) Record {
	return Record{
		Topic: topic,
		Key:   []byte(deviceID),
		Value: payload,
		Headers: []kafka.Header{
			{Key: HeaderReason, Value: []byte(reason)},
			{Key: HeaderDetail, Value: []byte(detail)},
			{Key: HeaderDeviceID, Value: []byte(deviceID)},
			{Key: HeaderSourceTopic, Value: []byte(source)},
			{Key: HeaderDeadLetteredAt, Value: []byte(strconv.FormatInt(time.Now().UnixMilli(), 10))},
		},
	}
}
