package embedded_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/kit/disktest"
)

// Below its free-space floor the broker refuses produces with
// KAFKA_STORAGE_ERROR instead of writing until the disk is full; once
// space is back (past the hysteresis margin) it accepts them again.
func TestBrokerRefusesProducesBelowFloor(t *testing.T) {
	disk := disktest.Mount(t, "32m")
	const floor = 8 << 20
	k, err := embedded.ListenKafka(embedded.KafkaConfig{Listen: "127.0.0.1:0", DataDir: disk, Partitions: 1,
		MinFreeBytes: floor, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	produce := func(retries int) error {
		cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addr()), kgo.AllowAutoTopicCreation(), kgo.RecordRetries(retries),
			kgo.MetadataMinAge(100*time.Millisecond)) // a storage error refreshes metadata before a retry
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		return cl.ProduceSync(ctx, &kgo.Record{Topic: "requests", Value: []byte("pay")}).FirstErr()
	}
	if err := produce(0); err != nil {
		t.Fatalf("produce with room on the disk: %v", err)
	}
	ballast := disktest.Fill(t, disk, floor/2)
	start := time.Now()
	// Far from the floor the broker reads the free space every 100 ms
	// (diskReadEvery): a produce soon after the fill may still be accepted.
	var refused error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if refused = produce(1); refused != nil {
			break
		}
	}
	t.Logf("refused after %s", time.Since(start))
	if !errors.Is(refused, kerr.KafkaStorageError) {
		t.Fatalf("produce below the floor: %v, want KAFKA_STORAGE_ERROR", refused)
	}
	if free := disktest.Free(t, disk); free < floor/4 {
		t.Fatalf("%d bytes free after the refusals: the broker kept writing", free)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	// Retried as a producer does, the produce lands once space is back.
	if err := produce(50); err != nil {
		t.Fatalf("produce after space came back: %v", err)
	}
}
