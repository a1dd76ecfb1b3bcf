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
	if err := kafkapipe.EnsureTopics(ctx, []string{addr}, 4, "ours", "writer"); err != nil {
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
