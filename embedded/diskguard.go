package embedded

import (
	"fmt"
	"log/slog"
	"sync"

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

	mu    sync.Mutex
	floor diskspace.Floor
	free  uint64 // last reading
	isLow bool
}

// guardDisk installs the produce check on c.
func guardDisk(c *kfake.Cluster, dir string, floor uint64, log *slog.Logger) {
	g := &diskGuard{dir: dir, log: log, floor: diskspace.Floor{Min: floor}}
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		low, free := g.low()
		if !low {
			return nil, nil, false // kfake writes the records as usual
		}
		c.KeepControl()
		return refuseProduce(req.(*kmsg.ProduceRequest), fmt.Sprintf("broker disk low: %s free, below the floor of %s", diskspace.MiB(free), diskspace.MiB(floor))), nil, true
	})
}

// low reads the free space (a statfs, 2.4 µs here, BenchmarkFree: every produce
// reads it, so a burst cannot overshoot the floor) and reports whether
// produces are refused, and the free space read.
func (g *diskGuard) low() (bool, uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	free, err := diskspace.Free(g.dir)
	if err != nil {
		g.log.Warn("embedded kafka: read free space", "err", err)
		return g.isLow, g.free
	}
	low, changed := g.floor.Note(free)
	g.free, g.isLow = free, low
	switch {
	case changed && low:
		g.log.Warn("embedded kafka: data disk low; refusing produces (KAFKA_STORAGE_ERROR) until space is back", "dir", g.dir, "free", diskspace.MiB(free), "floor", diskspace.MiB(g.floor.Min))
	case changed:
		g.log.Info("embedded kafka: data disk has room again; accepting produces", "dir", g.dir, "free", diskspace.MiB(free))
	}
	return low, free
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
