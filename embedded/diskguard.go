package embedded

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/edgebridge/edgebridge/internal/diskspace"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The broker's own high-water mark: while the filesystem holding its data
// has less than a floor free, every produce is refused with
// KAFKA_STORAGE_ERROR (a retriable error: producers keep their records and
// try again) instead of being written until the disk is full and a write
// fails half-way. Fetches and offset commits still work, so backends drain
// the backlog and the trimmer frees its space. The bridge has its own mark
// (kafka.min_free_bytes) for the broker it runs in-process; this one guards
// the broker run as its own process (`edgebridge broker kafka`).

type diskGuard struct {
	dir string
	log *slog.Logger
	// statfs and now are diskspace.Free and time.Now, but in tests.
	statfs func(dir string) (uint64, error)
	now    func() time.Time

	mu    sync.Mutex
	floor diskspace.Floor
	free  uint64 // last reading
	isLow bool
	read  time.Time // of the last reading; zero before the first
	since uint64    // bytes of the produces accepted since it
}

// diskReadEvery bounds how stale the free space a produce is let through
// on may be, while the broker's own writes since the last reading keep it
// clear of the floor (see low).
const diskReadEvery = 100 * time.Millisecond

// guardDisk installs the produce check on c.
func guardDisk(c *kfake.Cluster, dir string, floor uint64, log *slog.Logger) {
	g := &diskGuard{dir: dir, log: log, floor: diskspace.Floor{Min: floor}, statfs: diskspace.Free, now: time.Now}
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		low, free := g.low(produceBytes(req.(*kmsg.ProduceRequest)))
		if !low {
			return nil, nil, false // kfake writes the records as usual
		}
		c.KeepControl()
		return refuseProduce(req.(*kmsg.ProduceRequest), fmt.Sprintf("broker disk low: %s free, below the floor of %s", diskspace.MiB(free), diskspace.MiB(floor))), nil, true
	})
}

// low reports whether a produce of n bytes is refused, and the free space
// it goes by. It reads the free space (a statfs: 2.4 µs in BenchmarkFree,
// but 20-40 µs of the node's CPU at a site's rate, where each produce
// arrives on an idle core) when the last reading is diskReadEvery old, or
// when that reading less the bytes accepted since, these included, comes
// within the floor's resume margin: near the floor every produce reads it,
// so the broker's own writes cannot overshoot the floor, and another
// process's writes go unseen for diskReadEvery at most.
func (g *diskGuard) low(n uint64) (bool, uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	g.since += n
	if !g.read.IsZero() && now.Sub(g.read) < diskReadEvery && !g.isLow &&
		g.free >= g.since && g.free-g.since >= g.floor.ResumeAbove() {
		return false, g.free - g.since
	}
	free, err := g.statfs(g.dir)
	if err != nil {
		g.log.Warn("embedded kafka: read free space", "err", err)
		return g.isLow, g.free
	}
	low, changed := g.floor.Note(free)
	g.free, g.isLow, g.read, g.since = free, low, now, n // n is written after this reading
	switch {
	case changed && low:
		g.log.Warn("embedded kafka: data disk low; refusing produces (KAFKA_STORAGE_ERROR) until space is back", "dir", g.dir, "free", diskspace.MiB(free), "floor", diskspace.MiB(g.floor.Min))
	case changed:
		g.log.Info("embedded kafka: data disk has room again; accepting produces", "dir", g.dir, "free", diskspace.MiB(free))
	}
	return low, free
}

// produceBytes is the size of the record batches req carries.
func produceBytes(req *kmsg.ProduceRequest) uint64 {
	var n uint64
	for _, t := range req.Topics {
		for _, p := range t.Partitions {
			n += uint64(len(p.Records))
		}
	}
	return n
}

// refuseProduce answers req with KAFKA_STORAGE_ERROR on every partition;
// nil for acks=0 (no response is expected).
func refuseProduce(req *kmsg.ProduceRequest, why string) kmsg.Response {
	if req.Acks == 0 {
		return nil
	}
	resp := req.ResponseKind().(*kmsg.ProduceResponse)
	for _, rt := range req.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = kerr.KafkaStorageError.Code
			sp.ErrorMessage = &why
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}
