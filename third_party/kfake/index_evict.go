package kfake

import (
	"container/list"
	"path/filepath"
	"sort"
	"sync"
)

// edgebridge: the batch index of a sealed segment can be evicted from
// memory and read back from the segment's files when a request needs it.
//
// kfake keeps a batchMeta (72 bytes) for every batch it holds, so a
// broker buffering a long outage's backlog grew by that much per batch,
// and a restart rebuilt all of it before it served anything. With
// IndexBudget set, a partition's active segment keeps its index, the
// indexes of sealed segments stay in memory up to the budget (oldest
// loaded first out), and everything else is summarised in an
// evictedIndex: what the code that passes over every segment (retention,
// trimming, the timestamp running max, the byte count) needs without
// reading the segment back.
//
// Rules that keep this safe:
//   - Only sealed segments are evicted; the active (last) segment of a
//     partition never is.
//   - Every reader reaches an index through pd.batches(si), which reads
//     an evicted one back; the count and the first and last batch come
//     from numBatches, firstBatch and lastBatch without a read.
//   - An index is never changed while evicted: trimLeft and compaction
//     read it back (or drop the whole segment) first.
//   - A batchMeta field that changes after the write (only
//     maxEarlierTimestamp) is recomputed on read-back from the summary.
//   - The FIFO of loaded sealed segments is touched from the cluster's
//     run goroutine, and during startup only by nothing: the per-partition
//     load goroutines evict without it (evictLoaded).

// IndexBudget keeps at most n batch index entries of sealed segments in
// memory across the cluster, besides each partition's active segment.
// A sealed segment's index past the budget is dropped and read back from
// its files when a fetch or another request needs it. 0 (the default)
// keeps every index in memory, as upstream kfake does.
func IndexBudget(n int) Opt {
	return opt{func(cfg *cfg) { cfg.indexBudget = n }}
}

// indexCache tracks the sealed segments whose indexes are in memory.
type indexCache struct {
	c      *Cluster
	budget int

	mu     sync.Mutex
	loaded int        // entries in the segments listed in fifo
	fifo   *list.List // of loadedSeg, oldest first
}

type loadedSeg struct {
	pd   *partData
	base int64
	n    int
}

// evictedIndex summarises the index of an evicted segment.
type evictedIndex struct {
	n           int
	nbytes      int64
	first, last batchMeta
	// maxTimestamp and minMaxTimestamp are the largest and smallest of
	// the batches' own maxTimestamp (not floored, unlike segmentInfo's).
	maxTimestamp, minMaxTimestamp int64
}

func newIndexCache(c *Cluster, budget int) *indexCache {
	if budget <= 0 {
		return nil
	}
	return &indexCache{c: c, budget: budget, fifo: list.New()}
}

// numBatches returns the number of batches in the segment.
func (si *segmentInfo) numBatches() int {
	if si.evicted != nil {
		return si.evicted.n
	}
	return len(si.index)
}

// batchBytes returns the wire bytes of the segment's batches.
func (si *segmentInfo) batchBytes() int64 {
	if si.evicted != nil {
		return si.evicted.nbytes
	}
	var n int64
	for i := range si.index {
		n += int64(si.index[i].nbytes)
	}
	return n
}

// firstBatch and lastBatch return a copy of the segment's first and last
// batch, which must exist.
func (si *segmentInfo) firstBatch() batchMeta {
	if si.evicted != nil {
		return si.evicted.first
	}
	return si.index[0]
}

func (si *segmentInfo) lastBatch() batchMeta {
	if si.evicted != nil {
		return si.evicted.last
	}
	return si.index[len(si.index)-1]
}

// batches returns the index of segment si, reading an evicted one back
// from its files. It returns nil if that read fails (logged).
func (pd *partData) batches(si int) []batchMeta {
	seg := &pd.segments[si]
	if seg.evicted == nil {
		return seg.index
	}
	return pd.ix.load(pd, si)
}

// evict drops the index of segment si, keeping its summary, unless it is
// the active segment.
func (pd *partData) evict(si int) {
	if si < len(pd.segments)-1 {
		pd.segments[si].evictIndex()
	}
}

// evictIndex drops the segment's index, keeping its summary. An empty
// or already evicted index is left as it is.
func (seg *segmentInfo) evictIndex() {
	if seg.evicted != nil || len(seg.index) == 0 {
		return
	}
	ev := &evictedIndex{
		n:               len(seg.index),
		first:           seg.index[0],
		last:            seg.index[len(seg.index)-1],
		maxTimestamp:    seg.index[0].maxTimestamp,
		minMaxTimestamp: seg.index[0].maxTimestamp,
	}
	for i := range seg.index {
		m := &seg.index[i]
		ev.nbytes += int64(m.nbytes)
		ev.maxTimestamp = max(ev.maxTimestamp, m.maxTimestamp)
		ev.minMaxTimestamp = min(ev.minMaxTimestamp, m.maxTimestamp)
	}
	seg.evicted = ev
	seg.index = nil
	if seg.readFile != nil {
		seg.readFile.Close()
		seg.readFile = nil
	}
}

// evictLoaded evicts segment si right after a startup load read it (it
// is the last so far, but not the last file), if the cluster evicts at
// all. It does not touch the FIFO, so the per-partition load goroutines
// can call it.
func (pd *partData) evictLoaded(si int) {
	if pd.ix != nil {
		pd.segments[si].evictIndex()
	}
}

// sealed records that segment si was just sealed (a newer segment was
// rolled): its index now counts against the budget.
func (pd *partData) sealed(si int) {
	if pd.ix != nil {
		pd.ix.add(pd, pd.segments[si].base, len(pd.segments[si].index))
	}
}

// load reads segment si's index back from its files.
func (ix *indexCache) load(pd *partData, si int) []batchMeta {
	seg := &pd.segments[si]
	ev := seg.evicted
	c := ix.c
	pdir := partDir(c.storageDir, pd.t, pd.p)
	raw, err := c.fs.ReadFile(filepath.Join(pdir, segmentFileName(seg.base)))
	if err != nil {
		c.cfg.logger.Logf(LogLevelError, "partition %s-%d segment %d: reading an evicted index back: %v", pd.t, pd.p, seg.base, err)
		return nil
	}
	idxRaw, _ := c.fs.ReadFile(filepath.Join(pdir, indexFileName(seg.base)))
	index := make([]batchMeta, 0, ev.n)
	parseSegment(raw, idxRaw, func(pos int, b *partBatch) {
		// trimLeft drops batches from the front of the first segment
		// while they stay in its file.
		if b.FirstOffset >= ev.first.firstOffset {
			index = append(index, b.meta(int64(pos)))
		}
	})
	if len(index) != ev.n || index[0].firstOffset != ev.first.firstOffset {
		c.cfg.logger.Logf(LogLevelError, "partition %s-%d segment %d: read back %d batches of the %d evicted", pd.t, pd.p, seg.base, len(index), ev.n)
		return nil
	}
	running := ev.first.maxEarlierTimestamp
	for i := range index {
		if i > 0 {
			running = max(running, index[i].maxTimestamp)
		}
		index[i].maxEarlierTimestamp = running
	}
	seg.index = index
	seg.evicted = nil
	ix.add(pd, seg.base, len(index))
	return index
}

// add lists a loaded sealed segment and evicts the oldest listed ones
// while the budget is exceeded, never the one just listed.
func (ix *indexCache) add(pd *partData, base int64, n int) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.fifo.PushBack(loadedSeg{pd, base, n})
	ix.loaded += n
	for ix.loaded > ix.budget && ix.fifo.Len() > 1 {
		old := ix.fifo.Remove(ix.fifo.Front()).(loadedSeg)
		ix.loaded -= old.n
		// The segment may have been trimmed or rebuilt since.
		segs := old.pd.segments
		si := sort.Search(len(segs), func(i int) bool { return segs[i].base >= old.base })
		if si < len(segs) && segs[si].base == old.base {
			old.pd.evict(si)
		}
	}
}
