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
	"strconv"
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
	// BatchTimeout bounds how long a record waits for its batch to fill.
	// Default: 1ms (kafka-go's 1s default would add a second to every request).
	BatchTimeout time.Duration
	// BatchSize is the most records in one produce request per partition. Default: 1000.
	BatchSize int
	// WriteTimeout bounds one produce request. Default: 10s.
	WriteTimeout time.Duration
}

func (c ProducerConfig) withDefaults() ProducerConfig {
	if c.BatchTimeout <= 0 {
		c.BatchTimeout = time.Millisecond
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
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
type Producer struct {
	w  *kafka.Writer
	tr *kafka.Transport
}

// NewProducer returns a Producer; it does no I/O.
func NewProducer(cfg ProducerConfig) (*Producer, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("kafkapipe: no brokers")
	}
	cfg = cfg.withDefaults()
	tr := &kafka.Transport{}
	return &Producer{tr: tr, w: &kafka.Writer{
		Transport:    tr,
		Addr:         kafka.TCP(cfg.Brokers...),
		Balancer:     &kafka.Hash{}, // same key, same partition: per-device order
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: cfg.BatchTimeout,
		BatchSize:    cfg.BatchSize,
		BatchBytes:   16 << 20,
		WriteTimeout: cfg.WriteTimeout,
		MaxAttempts:  3,
	}}, nil
}

// Write produces recs and returns once Kafka acknowledged all of them (all
// in-sync replicas), or with an error. On error some records may have been
// written; callers retry the whole batch and rely on downstream dedup.
// Records for the same key keep their order within one call.
func (p *Producer) Write(ctx context.Context, recs ...Record) error {
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		msgs[i] = kafka.Message{Topic: r.Topic, Key: r.Key, Value: r.Value, Headers: r.Headers}
	}
	if err := p.w.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("kafkapipe: write %d records: %w", len(recs), err)
	}
	return nil
}

// Close flushes and closes the producer and its connections.
func (p *Producer) Close() error {
	err := p.w.Close()
	p.tr.CloseIdleConnections()
	return err
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
