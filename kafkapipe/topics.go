package kafkapipe

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/metadata"

	"github.com/edgebridge/edgebridge/internal/schedule"
)

// EnsureTopics creates the topics with the given partition count if they do
// not exist. Existing topics are left as they are.
func EnsureTopics(ctx context.Context, brokers []string, sec Security, partitions int, topics ...string) error {
	client, done := adminClient(brokers, sec, 10*time.Second)
	defer done()
	return createTopics(ctx, client, partitions, topics, nil)
}

func createTopics(ctx context.Context, client *kafka.Client, partitions int, topics []string, configs map[string]map[string]string) error {
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		tc := kafka.TopicConfig{Topic: t, NumPartitions: partitions, ReplicationFactor: -1}
		for name, value := range configs[t] {
			tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: name, ConfigValue: value})
		}
		req.Topics = append(req.Topics, tc)
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

// DefaultTopicWait bounds EnsureTopics' wait for new topics to be served.
const DefaultTopicWait = 10 * time.Second

// EnsureTopics creates the topics that do not exist (with partitions
// partitions each) and returns once this producer can write to every one
// of them, waiting at most DefaultTopicWait (or until ctx ends).
//
// A topic another client created a moment ago is not yet in this
// producer's cached cluster metadata, and a freshly created topic may
// answer UNKNOWN_TOPIC_OR_PARTITION until its partitions have leaders:
// without this wait a Write right after a subscription created the topic
// failed.
//
// When they are not, a refused login or certificate is returned as such
// (see Diagnose), not as the "Broker Not Available" kafka-go reports.
func (p *Producer) EnsureTopics(ctx context.Context, partitions int, topics ...string) error {
	wait, cancel := context.WithTimeout(ctx, DefaultTopicWait)
	defer cancel()
	var last error
	ok := schedule.Retry(wait, func() error {
		last = p.ensureTopics(wait, partitions, topics)
		return last
	}, nil)
	if ok {
		return nil
	}
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	if cause := Diagnose(dctx, p.cfg.Brokers, p.cfg.Security); cause != nil && ctx.Err() == nil {
		return cause
	}
	return fmt.Errorf("kafkapipe: topics %v not served within %s: %w", topics, DefaultTopicWait, errors.Join(last, wait.Err()))
}

func (p *Producer) ensureTopics(ctx context.Context, partitions int, topics []string) error {
	// Through the producer's own transport: on success kafka-go refreshes
	// its metadata until the topics appear.
	if err := createTopics(ctx, p.client, partitions, topics, p.cfg.TopicConfigs); err != nil {
		return err
	}
	// A topic that already existed is refreshed by a metadata request that
	// allows auto-creation: kafka-go then asks the broker instead of its
	// cache, and waits until its cache has the topics. They exist, so
	// nothing is created.
	res, err := p.tr.RoundTrip(ctx, p.client.Addr, &metadata.Request{TopicNames: topics, AllowAutoTopicCreation: true})
	if err != nil {
		return fmt.Errorf("kafkapipe: metadata of %v: %w", topics, err)
	}
	md, _ := res.(*metadata.Response)
	if md == nil {
		return fmt.Errorf("kafkapipe: metadata of %v: unexpected response %T", topics, res)
	}
	var errs []error
	for _, t := range md.Topics {
		if t.ErrorCode != 0 {
			errs = append(errs, fmt.Errorf("kafkapipe: topic %s: %w", t.Name, kafka.Error(t.ErrorCode)))
		}
		for _, part := range t.Partitions {
			if part.ErrorCode != 0 {
				errs = append(errs, fmt.Errorf("kafkapipe: %s[%d]: %w", t.Name, part.PartitionIndex, kafka.Error(part.ErrorCode)))
			}
		}
	}
	for _, t := range topics {
		p.forget(t)
		if _, err := p.partitionsOf(ctx, t); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Ping checks that a broker answers a metadata request.
func Ping(ctx context.Context, brokers []string, sec Security) error {
	client, done := adminClient(brokers, sec, 5*time.Second)
	defer done()
	if _, err := client.Metadata(ctx, &kafka.MetadataRequest{}); err != nil {
		if cause := Diagnose(ctx, brokers, sec); cause != nil {
			return cause
		}
		return fmt.Errorf("kafkapipe: metadata: %w", err)
	}
	return nil
}

// Diagnose connects to each broker in turn, with TLS and SASL as
// configured, and returns the first failure: kafka-go's client reports a
// refused login or certificate only as "Broker Not Available". Nil when a
// broker accepts the connection.
func Diagnose(ctx context.Context, brokers []string, sec Security) error {
	var errs []error
	for _, b := range brokers {
		conn, err := sec.dialer().DialContext(ctx, "tcp", b)
		if err == nil {
			conn.Close()
			return nil
		}
		errs = append(errs, fmt.Errorf("kafkapipe: connect %s: %w", b, err))
	}
	return errors.Join(errs...)
}

// adminClient returns a client with its own transport (not kafka-go's
// global pool), and a func that closes its connections.
func adminClient(brokers []string, sec Security, timeout time.Duration) (*kafka.Client, func()) {
	tr := sec.transport()
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
