package kafkapipe_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/kafkapipe"
)

// readAll reads every record of topic's partitions 0..n-1, by partition.
func readAll(t *testing.T, addr, topic string, partitions, want int) map[int][]kafka.Message {
	t.Helper()
	got := map[int][]kafka.Message{}
	total := 0
	for p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for {
			lag, err := r.ReadLag(ctx)
			if err != nil {
				t.Fatalf("partition %d lag: %v", p, err)
			}
			if lag == 0 {
				break
			}
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("partition %d: %v", p, err)
			}
			got[p] = append(got[p], m)
			total++
		}
		cancel()
		r.Close()
	}
	if total != want {
		t.Fatalf("read %d records, want %d", total, want)
	}
	return got
}

// Records land where kafka-go's Writer with the Hash balancer puts them (a
// bridge upgraded in place keeps each device on its partition), keep their
// order per key even when a partition's share is split over several
// requests, and keep their headers.
func TestProducerPlacesLikeKafkaGoAndKeepsOrder(t *testing.T) {
	k, err := embedded.ListenKafka(embedded.KafkaConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	addr := k.Addr()
	ctx := context.Background()
	if err := kafkapipe.EnsureTopics(ctx, []string{addr}, kafkapipe.Security{}, 4, "ours", "writer"); err != nil {
		t.Fatal(err)
	}
	// 2 KB requests: ~40 records per device, so every partition's share
	// goes out in several requests.
	p, err := kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{addr}, MaxRequestBytes: 2048})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{Addr: kafka.TCP(addr), Transport: tr, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()

	const devices, each = 10, 40
	var recs []kafkapipe.Record
	var msgs []kafka.Message
	for i := range each {
		for d := range devices {
			key := fmt.Appendf(nil, "dev-%02d", d)
			val := fmt.Appendf(nil, "%02d/%03d/%s", d, i, bytes.Repeat([]byte("x"), 200))
			recs = append(recs, kafkapipe.Record{Topic: "ours", Key: key, Value: val, Headers: []kafka.Header{{Key: "n", Value: fmt.Appendf(nil, "%d", i)}}})
			msgs = append(msgs, kafka.Message{Topic: "writer", Key: key, Value: val})
		}
	}
	if err := p.Write(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	ours := readAll(t, addr, "ours", 4, devices*each)
	theirs := readAll(t, addr, "writer", 4, devices*each)

	partOf := map[string]int{}
	for part, ms := range theirs {
		for _, m := range ms {
			partOf[string(m.Key)] = part
		}
	}
	next := map[string]int{}
	for part, ms := range ours {
		for _, m := range ms {
			key := string(m.Key)
			if part != partOf[key] {
				t.Fatalf("%s on partition %d; kafka-go's Writer puts it on %d", key, part, partOf[key])
			}
			if want := fmt.Sprintf("%s/%03d/", key[4:], next[key]); !bytes.HasPrefix(m.Value, []byte(want)) {
				t.Fatalf("%s: got %.7q, want %q next (order per key)", key, m.Value, want)
			}
			if len(m.Headers) != 1 || string(m.Headers[0].Value) != fmt.Sprint(next[key]) {
				t.Fatalf("%s: headers %v", key, m.Headers)
			}
			next[key]++
		}
	}
}

func TestProducerUnknownTopic(t *testing.T) {
	addr := broker(t)
	p, err := kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	err = p.Write(context.Background(), kafkapipe.Record{Topic: "no.such.topic", Value: []byte("v")})
	if !errors.Is(err, kafka.UnknownTopicOrPartition) {
		t.Fatalf("got %v, want UnknownTopicOrPartition", err)
	}
}

// createTopic creates topic with one partition and the given topic configs.
func createTopic(t *testing.T, addr, topic string, configs ...kafka.ConfigEntry) {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr}
	res, err := c.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: topic, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: configs}}})
	if err != nil || res.Errors[topic] != nil {
		t.Fatalf("create %s: %v %v", topic, err, res.Errors)
	}
}

// A record Kafka refuses for good (here: larger than the topic's
// max.message.bytes) fails alone and is not retriable; the records around
// it in the same batch are written once, in order.
func TestProduceRefusalIsPerRecord(t *testing.T) {
	addr := broker(t)
	createTopic(t, addr, "small", kafka.ConfigEntry{ConfigName: "max.message.bytes", ConfigValue: "1000"})
	p, err := kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var recs []kafkapipe.Record
	for i := range 5 {
		size := 100
		if i == 2 {
			size = 2000
		}
		recs = append(recs, kafkapipe.Record{Topic: "small", Key: []byte("dev"), Value: fmt.Appendf(nil, "%d/%s", i, bytes.Repeat([]byte("x"), size))})
	}
	errs := p.Produce(context.Background(), recs)
	for i, err := range errs {
		switch {
		case i == 2 && (err == nil || kafkapipe.IsRetryable(err) || !errors.Is(err, kafka.MessageSizeTooLarge)):
			t.Fatalf("record 2: got %v, want MessageSizeTooLarge, not retriable", err)
		case i == 2:
			if got := kafkapipe.RefusalReason(err); got != "kafka_record_too_large" {
				t.Fatalf("got refusal reason %q, want kafka_record_too_large", got)
			}
		case err != nil:
			t.Fatalf("record %d: got %v, want written", i, err)
		}
	}
	got := readAll(t, addr, "small", 1, 4)[0]
	for k, want := range []string{"0/", "1/", "3/", "4/"} {
		if !bytes.HasPrefix(got[k].Value, []byte(want)) {
			t.Fatalf("record %d: got %.3q, want %q (each once, in order)", k, got[k].Value, want)
		}
	}
}

func TestIsRetryable(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("t[0]: %w", kafka.MessageSizeTooLarge), false},
		{kafka.TopicAuthorizationFailed, false},
		{kafka.InvalidRecord, false},
		{fmt.Errorf("t[0]: %w", kafka.UnknownTopicOrPartition), true},
		{kafka.NotLeaderForPartition, true},
		{kafka.RequestTimedOut, true},
		{errors.New("dial tcp: connection refused"), true},
		{context.DeadlineExceeded, true},
	}
	for _, tc := range tests {
		if got := kafkapipe.IsRetryable(tc.err); got != tc.want {
			t.Errorf("IsRetryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// A topic another client just created is not in the producer's cached
// metadata: a Write fails with UNKNOWN_TOPIC_OR_PARTITION (what a Dapr app
// publishing to a topic it had just subscribed to got). EnsureTopics
// returns once the producer serves it.
func TestEnsureTopicsCreatedElsewhere(t *testing.T) {
	addr := broker(t)
	ctx := context.Background()
	p, err := kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.EnsureTopics(ctx, 2, "first"); err != nil {
		t.Fatal(err)
	}
	if err := p.Write(ctx, kafkapipe.Record{Topic: "first", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		topic := fmt.Sprintf("later-%d", i)
		if err := kafkapipe.EnsureTopics(ctx, []string{addr}, kafkapipe.Security{}, 2, topic); err != nil { // another client
			t.Fatal(err)
		}
		if i == 0 {
			if err := p.Write(ctx, kafkapipe.Record{Topic: topic, Value: []byte("v")}); !errors.Is(err, kafka.UnknownTopicOrPartition) {
				t.Fatalf("write before EnsureTopics: got %v, want UnknownTopicOrPartition from the cached metadata", err)
			}
		}
		if err := p.EnsureTopics(ctx, 2, topic); err != nil {
			t.Fatal(err)
		}
		if err := p.Write(ctx, kafkapipe.Record{Topic: topic, Value: []byte("v")}); err != nil {
			t.Fatalf("write after EnsureTopics: %v", err)
		}
	}
}
