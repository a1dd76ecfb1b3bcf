package kafkapipe_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/kafkapipe"
)

// BenchmarkProduceBatch: one Write of a batch of 1 KB records (the size of
// the bridge's ingest batches) to the embedded broker over loopback, acks=all.
func BenchmarkProduceBatch(b *testing.B) {
	for _, n := range []int{1, 64, 512} {
		b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
			k, err := embedded.ListenKafka(embedded.KafkaConfig{Listen: "127.0.0.1:0", DataDir: b.TempDir(), Partitions: 8})
			if err != nil {
				b.Fatal(err)
			}
			defer k.Close()
			ctx := context.Background()
			if err := kafkapipe.EnsureTopics(ctx, []string{k.Addr()}, kafkapipe.Security{}, 8, "bench"); err != nil {
				b.Fatal(err)
			}
			p, err := kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{k.Addr()}})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			value := []byte(strings.Repeat("v", 1024))
			recs := make([]kafkapipe.Record, n)
			for i := range recs {
				recs[i] = kafkapipe.Record{Topic: "bench", Key: fmt.Appendf(nil, "dev-%04d", i%50), Value: value}
			}
			b.SetBytes(int64(n * len(value)))
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Write(ctx, recs...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
