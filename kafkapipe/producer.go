// Package kafkapipe is edgebridge's Kafka hop: a Producer that writes
// envelopes durably (acks=all, keyed by device id) and a Consumer that reads
// them through a consumer group and commits only the contiguous acknowledged
// floor kept by an ackwindow.Window.
//
// Both speak to Kafka through github.com/segmentio/kafka-go.
package kafkapipe

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/edgebridge/edgebridge/internal/defaults"
)

// ProducerConfig configures a Producer. Zero values mean the default.
type ProducerConfig struct {
	// Brokers are the bootstrap addresses. Required.
	Brokers []string
	// MaxRequestBytes bounds the records of one produce request (a record
	// batch, which Kafka measures against message.max.bytes); a
	// partition's share of a Write that is larger goes out in several.
	// Default: 1 MiB (Kafka's default message.max.bytes).
	MaxRequestBytes int
	// WriteTimeout bounds one produce request. Default: 10s.
	WriteTimeout time.Duration
	// Security: TLS and SASL to the brokers.
	Security Security
	// TopicConfigs are the topic configs (retention.ms, …) of each topic
	// EnsureTopics creates, by topic name. A topic that exists keeps its
	// own. Default: the broker's defaults.
	TopicConfigs map[string]map[string]string
}

func (c ProducerConfig) withDefaults() ProducerConfig {
	defaults.Positive(&c.MaxRequestBytes, DefaultMaxMessageBytes)
	defaults.Positive(&c.WriteTimeout, DefaultWriteTimeout)
	return c
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
	tr := cfg.Security.transport()
	return &Producer{
		cfg: cfg, tr: tr, partitions: map[string]topicPartitions{},
		client: &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: cfg.WriteTimeout, Transport: tr},
	}, nil
}

// request is one produce request: records of one partition, in Write order.
type request struct {
	topic     string
	partition int
	index     []int // its records' positions in the Produce call
	bytes     int
}

// settle records err as the result of every record of r.
func (r *request) settle(errs []error, err error) {
	if err != nil {
		err = fmt.Errorf("%s[%d]: %w", r.topic, r.partition, err)
	}
	for _, i := range r.index {
		errs[i] = err
	}
}

// split returns one request per record of r.
func (r *request) split() []*request {
	out := make([]*request, len(r.index))
	for k := range r.index {
		out[k] = &request{topic: r.topic, partition: r.partition, index: r.index[k : k+1]}
	}
	return out
}

// Produce writes recs and returns once Kafka answered for every one:
// errs[i] is nil when recs[i] was acknowledged by all in-sync replicas.
// Use IsRetryable on a record's error: a retriable one (the broker was
// unreachable, a leader moved, the topic is still being created) may or may
// not have been written, and sending the record again is right (downstream
// deduplicates); any other is Kafka refusing that record for good (too
// large, invalid, not authorized), and sending it again cannot help.
//
// Records of one partition are sent in order: after a retriable failure,
// the partition's later records are not sent and fail with the same error.
// A request of several records that Kafka refuses for good is sent again
// one record per request, so the refusal is pinned on the records that
// cause it and the others are written. Records that were acknowledged are
// never sent twice by one call.
func (p *Producer) Produce(ctx context.Context, recs []Record) []error {
	errs := make([]error, len(recs))
	if len(recs) == 0 {
		return errs
	}
	chains := p.plan(ctx, recs, errs)
	now := time.Now()
	// Partitions in parallel; the requests of one partition one after the
	// other, so records keep their order.
	run := func(chain []*request) {
		var stop error // a retriable failure: the rest of the partition waits
		send := func(r *request) {
			if stop != nil {
				r.settle(errs, stop)
				return
			}
			err := p.produce(ctx, r, recs, now)
			r.settle(errs, err)
			if err != nil && IsRetryable(err) {
				stop = err
			}
		}
		for _, r := range chain {
			if stop == nil && len(r.index) > 1 {
				if err := p.produce(ctx, r, recs, now); err == nil || IsRetryable(err) {
					r.settle(errs, err)
					if err != nil {
						stop = err
					}
					continue
				}
				for _, one := range r.split() {
					send(one)
				}
				continue
			}
			send(r)
		}
	}
	if len(chains) == 1 {
		run(chains[0])
	} else {
		var wg sync.WaitGroup
		for _, c := range chains {
			wg.Go(func() { run(c) })
		}
		wg.Wait()
	}
	return errs
}

// Write produces recs and returns once Kafka acknowledged all of them (all
// in-sync replicas), or with the first record's error and how many failed.
// On error some records may have been written; callers that retry the
// whole batch rely on downstream dedup. Records for the same key keep their
// order within one call.
func (p *Producer) Write(ctx context.Context, recs ...Record) error {
	var first error
	failed := 0
	for _, err := range p.Produce(ctx, recs) {
		if err != nil {
			failed++
			first = cmp.Or(first, err)
		}
	}
	if first != nil {
		return fmt.Errorf("kafkapipe: write %d records, %d failed: %w", len(recs), failed, first)
	}
	return nil
}

// plan groups recs by partition, in order: one chain of requests per
// partition, each request at most MaxRequestBytes. A record of a topic
// whose partitions cannot be looked up gets that error in errs.
func (p *Producer) plan(ctx context.Context, recs []Record, errs []error) [][]*request {
	type tp struct {
		topic string
		part  int
	}
	type lookup struct {
		ids []int
		err error
	}
	chainOf := map[tp]int{}
	var chains [][]*request
	idsOf := map[string]lookup{} // one metadata lookup per topic per Write
	for i, r := range recs {
		l, ok := idsOf[r.Topic]
		if !ok {
			l.ids, l.err = p.partitionsOf(ctx, r.Topic)
			idsOf[r.Topic] = l
		}
		if l.err != nil {
			errs[i] = l.err
			continue
		}
		k := tp{r.Topic, p.balancer.Balance(kafka.Message{Key: r.Key}, l.ids...)}
		size := r.recordBytes()
		c, ok := chainOf[k]
		if !ok {
			c = len(chains)
			chainOf[k] = c
			chains = append(chains, nil)
		}
		var req *request
		if n := len(chains[c]); n > 0 && chains[c][n-1].bytes+size <= p.cfg.MaxRequestBytes {
			req = chains[c][n-1]
		} else {
			req = &request{topic: k.topic, partition: k.part, bytes: batchHeaderBytes}
			chains[c] = append(chains[c], req)
		}
		req.index = append(req.index, i)
		req.bytes += size
	}
	return chains
}

// produce sends r's records (of recs, stamped now). The records are built
// for each send: kafka-go's record values are readers, spent by a send.
func (p *Producer) produce(ctx context.Context, r *request, recs []Record, now time.Time) error {
	records := make([]kafka.Record, len(r.index))
	for k, i := range r.index {
		records[k] = kafka.Record{Time: now, Key: kafka.NewBytes(recs[i].Key), Value: kafka.NewBytes(recs[i].Value), Headers: recs[i].Headers}
	}
	res, err := p.client.Produce(ctx, &kafka.ProduceRequest{
		Topic: r.topic, Partition: r.partition, RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(records...),
	})
	if err == nil {
		err = res.Error
		for _, e := range res.RecordErrors {
			err = errors.Join(err, e)
		}
	}
	if err != nil && IsRetryable(err) {
		p.forget(r.topic) // the leader or the partitions may have changed
	}
	return err
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
	ids, err := partitionIDs(md, topic)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.partitions[topic] = topicPartitions{ids: ids, fetched: time.Now()}
	p.mu.Unlock()
	return ids, nil
}

// partitionIDs returns topic's sorted partition ids from md.
func partitionIDs(md *kafka.MetadataResponse, topic string) ([]int, error) {
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
