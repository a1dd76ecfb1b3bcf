package embedded

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgebridge/edgebridge/kit/kafkaload"
)

// TestRestartMemoryDoesNotScaleWithBacklog: the broker's start after an
// unclean stop (no snapshot: every segment is read back) holds about one
// segment at a time, not the whole log. Upstream kfake kept every batch
// read (and the segment bytes its records point into) until the replay
// ended: its peak grew with the backlog (426 MB over 300,000 batches of
// 1 KB). The 1,000,000-batch figure is BenchmarkRestartAfterCrash's.
func TestRestartMemoryDoesNotScaleWithBacklog(t *testing.T) {
	const (
		batches = 8000
		size    = 2 << 10 // 16 MiB of records, one per batch
	)
	dir := t.TempDir()
	r := newKafkaRig(t, dir, "127.0.0.1:0", KafkaConfig{Partitions: 1})
	for range batches {
		r.produce("backlog", 0, 1, size)
	}
	// A kill -9: the files as they are while the broker runs.
	crashed := t.TempDir()
	copyTree(t, dir, crashed)
	r.close()

	var k *Kafka
	peak := peakHeapDuring(func() {
		var err error
		k, err = ListenKafka(KafkaConfig{Listen: "127.0.0.1:0", DataDir: crashed, Partitions: 1, NoFsync: true,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
	})
	defer k.Close()
	backlog := int64(batches * size)
	t.Logf("restart over %d batches (%d MiB): peak heap growth %.1f MiB", batches, backlog>>20, float64(peak)/(1<<20))
	if peak > backlog/2 {
		t.Errorf("peak heap grew %d bytes loading a %d-byte backlog: the replay holds the log", peak, backlog)
	}
	// The restarted broker serves the backlog.
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	r2 := &kafkaRig{t: t, ctx: r.ctx, k: k, cl: cl, dir: crashed}
	if end := r2.logEnd("backlog", 0); end != batches {
		t.Fatalf("log end after the restart: got %d, want %d", end, batches)
	}
}

// peakHeapDuring runs fn with a tight GC target and returns the most the
// heap's live and unswept objects grew over their size before it.
func peakHeapDuring(fn func()) int64 {
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() int64 { metrics.Read(sample); return int64(sample[0].Value.Uint64()) }
	debug.FreeOSMemory()
	base := read()
	var peak int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(200 * time.Microsecond)
		defer t.Stop()
		for {
			peak = max(peak, read()-base)
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	fn()
	close(stop)
	wg.Wait()
	return max(peak, read()-base)
}

func copyTree(t testing.TB, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o750)
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		defer out.Close()
		_, err = io.Copy(out, src)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkRestartAfterCrash writes b.N one-record batches of 1 KB over 8
// partitions (no fsync), copies the data directory as a kill -9 leaves
// it, and starts a broker on the copy: it reports the restart's peak heap
// growth, the time until the broker listens with every partition loaded,
// and the heap a buffered batch costs the running broker. The issue's
// figure:
//
//	go test -run '^$' -bench RestartAfterCrash -benchtime 1000000x -timeout 1h ./embedded
func BenchmarkRestartAfterCrash(b *testing.B) {
	const parts = 8
	dir := b.TempDir()
	k, err := ListenKafka(KafkaConfig{Listen: "127.0.0.1:0", DataDir: dir, Partitions: parts, NoFsync: true,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	before := heapInUse()
	if err := kafkaload.Backlog(context.Background(), k.Addr(), parts, b.N, 1<<10); err != nil {
		b.Fatal(err)
	}
	buffered := heapInUse() - before
	crashed := b.TempDir()
	copyTree(b, dir, crashed)
	k.Close()

	start := time.Now()
	peak := peakHeapDuring(func() {
		k, err = ListenKafka(KafkaConfig{Listen: "127.0.0.1:0", DataDir: crashed, Partitions: parts,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
	})
	listening := time.Since(start)
	defer k.Close()
	b.ReportMetric(float64(peak)/(1<<20), "restart-peak-heap-MiB")
	b.ReportMetric(listening.Seconds(), "restart-s")
	b.ReportMetric(float64(buffered)/float64(b.N), "heap-B/batch")
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}
