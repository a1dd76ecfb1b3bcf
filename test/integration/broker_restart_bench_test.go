package integration

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgebridge/edgebridge/kit/kafkaload"
)

// BenchmarkBrokerKafkaRestart runs `edgebridge broker kafka` (built without
// -race) as its own process, writes b.N one-record batches of 1 KB over its
// 8 partitions, kills it with SIGKILL and starts it again on the same data.
// It reports the resident memory a buffered batch costs the running broker,
// the restarted broker's peak resident memory (VmHWM) and the time from its
// exec until a consumer has fetched the oldest record of every partition.
// The figure (a few minutes):
//
//	go test -run '^$' -bench BrokerKafkaRestart -benchtime 1000000x -timeout 1h ./test/integration
func BenchmarkBrokerKafkaRestart(b *testing.B) {
	const parts = 8
	dir := b.TempDir()
	addr := freeAddr(b)
	args := []string{"broker", "kafka", "-listen", addr, "-data", dir, "-partitions", strconv.Itoa(parts)}
	// The write phase skips fsync (the restart reads what the page cache
	// holds, as after a kill -9 of the process, not of the machine).
	writer := start(b, bins.edgebridgeNoRace, append(args, "-fsync=false")...)
	waitFor(b, 20*time.Second, "kafka broker listening", func() bool { return dialable(addr) })
	empty := statusKiB(writer.PID(), "VmRSS")

	if err := kafkaload.Backlog(context.Background(), addr, parts, b.N, 1<<10); err != nil {
		b.Fatal(err)
	}
	buffered := statusKiB(writer.PID(), "VmRSS")
	writer.Kill() // SIGKILL

	began := time.Now()
	restarted := start(b, bins.edgebridgeNoRace, args...)
	waitFor(b, 60*time.Second, "restarted kafka broker listening", func() bool { return dialable(addr) })
	listening := time.Since(began)
	for p := range int32(parts) {
		if p >= int32(b.N) {
			break
		}
		fetchOldest(b, addr, p)
	}
	serving := time.Since(began)
	peak := statusKiB(restarted.PID(), "VmHWM")

	b.ReportMetric(float64(buffered-empty)*1024/float64(b.N), "rss-B/batch")
	b.ReportMetric(float64(peak)/1024, "restart-peak-rss-MiB")
	b.ReportMetric(listening.Seconds(), "restart-listening-s")
	b.ReportMetric(serving.Seconds(), "restart-serving-s")
}

// fetchOldest consumes partition p of the backlog topic from its start
// until one record arrives.
func fetchOldest(b *testing.B, addr string, p int32) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{
		"backlog": {p: kgo.NewOffset().AtStart()},
	}))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		fs := cl.PollRecords(ctx, 1)
		if err := ctx.Err(); err != nil {
			b.Fatalf("partition %d: no record fetched: %v", p, err)
		}
		if len(fs.Records()) > 0 {
			return
		}
	}
}
