// Package kafkaload writes a backlog to a Kafka-protocol broker, for the
// benchmarks of the embedded broker's memory and restart (in process and
// as `edgebridge broker kafka`). It imports no product package.
package kafkaload

import (
	"context"
	"errors"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Topic is the backlog's topic (created by the broker on first use).
const Topic = "backlog"

// Backlog writes n records of size bytes over parts partitions, one
// record in flight per partition, so each record is a batch of its own:
// the most batches a broker has to keep for that many records.
func Backlog(ctx context.Context, addr string, parts int32, n, size int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.AllowAutoTopicCreation(),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerLinger(0))
	if err != nil {
		return err
	}
	defer cl.Close()
	value := make([]byte, size)
	errs := make([]error, parts)
	var wg sync.WaitGroup
	for p := range parts {
		wg.Go(func() {
			for i := int(p); i < n; i += int(parts) {
				if err := cl.ProduceSync(ctx, &kgo.Record{Topic: Topic, Partition: p, Value: value}).FirstErr(); err != nil {
					errs[p] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
