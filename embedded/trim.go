package embedded

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/edgebridge/edgebridge/internal/schedule"
)

// Storage bounded by the backlog. The embedded broker keeps every record
// until it is deleted (no retention by time or size: an edge site's
// backlog is whatever the backends have not processed yet, however old).
// A trimmer deletes what every consumer group has committed, once it has
// been committed for a grace period, with Kafka's DeleteRecords; whole
// segments below the new log start are removed from disk, so disk use
// follows the unprocessed backlog.
//
// The consumer groups are every group that has committed an offset on the
// broker: read from its groups log at start, then learnt from each offset
// commit. A group holds a topic once it has committed on any of its
// partitions; on a partition where it has not committed yet, it holds
// everything. A group that never committed holds nothing (it starts where
// its reset policy says, like on any Kafka).

// trimEvery is how often commits are read and records deleted.
const trimEvery = time.Second

// segmentBytes is the embedded broker's segment size: a segment is deleted
// only once all of it is committed, and the one holding a partition's last
// record is kept (below), so smaller segments free space sooner and keep
// less of it.
const segmentBytes = 1 << 20

// indexBudget is how many batches of sealed segments the broker indexes in
// memory (72 bytes each: 4.5 MiB), besides each partition's active
// segment. A backlog past it costs about 0.3 bytes per batch (a summary
// per segment); a fetch that reaches an evicted segment reads its index
// back from the segment (1 MiB). At 1 KB per request that is the reading
// position of 64 partitions at once.
const indexBudget = 1 << 16

// topicPart names a partition.
type topicPart struct {
	topic string
	part  int32
}

// mark is a partition's hold (the lowest offset any group still needs)
// first seen at a time.
type mark struct {
	at     time.Time
	offset int64
}

// trimmer deletes committed records. Its loop runs until stop; it must stop
// before the cluster closes (kfake's admin calls block once it has).
type trimmer struct {
	c     *kfake.Cluster
	after time.Duration
	log   *slog.Logger

	mu     sync.Mutex
	groups map[string]bool // every group that has committed

	marks   map[topicPart][]mark // hold history within the grace, oldest first
	deleted map[topicPart]int64  // log start this trimmer set

	stop func() // set by startTrimmer
}

// startTrimmer starts a trimmer's loop; stop ends it.
func startTrimmer(c *kfake.Cluster, groupsLog []byte, after time.Duration, log *slog.Logger) *trimmer {
	t := newTrimmer(c, groupsLog, after, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.stop = func() { cancel(); <-done }
	go func() {
		defer close(done)
		t.loop(ctx)
	}()
	return t
}

// newTrimmer learns the groups in the broker's groups log (its contents, as
// repairLogs returned them) and watches offset commits for new ones.
func newTrimmer(c *kfake.Cluster, groupsLog []byte, after time.Duration, log *slog.Logger) *trimmer {
	t := &trimmer{c: c, after: after, log: log, groups: loggedGroups(groupsLog),
		marks: map[topicPart][]mark{}, deleted: map[topicPart]int64{}}
	learn := func(group string) {
		t.mu.Lock()
		t.groups[group] = true
		t.mu.Unlock()
	}
	c.ControlKey(int16(kmsg.OffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		learn(req.(*kmsg.OffsetCommitRequest).Group)
		return nil, nil, false // observed only: kfake handles the commit
	})
	c.ControlKey(int16(kmsg.TxnOffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		learn(req.(*kmsg.TxnOffsetCommitRequest).Group)
		return nil, nil, false
	})
	return t
}

func (t *trimmer) loop(ctx context.Context) {
	schedule.Every(ctx, trimEvery, t.trim)
}

// trim deletes, on every partition some group holds, the records below the
// hold that was reached at least the grace period ago — but never a
// partition's last record: the broker rebuilds a partition's offsets from
// its segment files after a crash, and with none left its log would start
// again at offset 0, behind every group's committed offset.
func (t *trimmer) trim(now time.Time) {
	for tp, h := range t.holds() {
		ms := t.marks[tp]
		if len(ms) == 0 || ms[len(ms)-1].offset != h.offset {
			ms = append(ms, mark{at: now, offset: h.offset})
		}
		// The newest mark at least `after` old is safe; older ones are
		// no longer needed.
		safe := int64(-1)
		for len(ms) > 0 && now.Sub(ms[0].at) >= t.after {
			safe = ms[0].offset
			if len(ms) == 1 || now.Sub(ms[1].at) < t.after {
				break
			}
			ms = ms[1:]
		}
		t.marks[tp] = ms
		safe = min(safe, h.offset, h.end-1) // a group may have rewound since
		if safe <= t.deleted[tp] {
			continue
		}
		if err := t.c.DeleteRecords(tp.topic, tp.part, safe); err != nil {
			// Out of range: the log already starts later (a group
			// rewound, or the topic was recreated). Nothing to free.
			t.log.Debug("embedded kafka: delete committed records", "topic", tp.topic, "partition", tp.part, "offset", safe, "err", err)
		}
		t.deleted[tp] = safe
	}
}

// hold is the lowest offset any group still needs on a partition, and the
// partition's end.
type hold struct{ offset, end int64 }

// holds returns, for every partition of every topic some group has
// committed on, the lowest offset a group still needs: its committed
// offset, or 0 where it has not committed (nothing may be deleted then).
func (t *trimmer) holds() map[topicPart]hold {
	t.mu.Lock()
	groups := make([]string, 0, len(t.groups))
	for g := range t.groups {
		groups = append(groups, g)
	}
	t.mu.Unlock()
	holds := map[topicPart]hold{}
	parts := map[string][]*kfake.PartitionInfo{}
	for _, g := range groups {
		info := t.c.GroupInfo(g)
		if info == nil { // deleted, or its offsets expired
			t.mu.Lock()
			delete(t.groups, g)
			t.mu.Unlock()
			continue
		}
		for topic, commits := range info.Commits {
			ps, ok := parts[topic]
			if !ok {
				ps = t.c.PartitionInfos(topic)
				parts[topic] = ps
			}
			for _, p := range ps {
				tp := topicPart{topic, p.Partition}
				need := int64(0)
				if c, ok := commits[p.Partition]; ok && c.Offset > 0 {
					need = min(c.Offset, p.HighWatermark)
				}
				if cur, ok := holds[tp]; !ok || need < cur.offset {
					holds[tp] = hold{offset: need, end: p.HighWatermark}
				}
			}
		}
	}
	return holds
}

// loggedGroups returns the groups named in the broker's groups log, so
// that a group that committed before a restart holds its records even
// before it commits again. (A log that cannot be read fails the broker's
// start in repairLogs: trimming without knowing every group could delete
// what one needs.)
func loggedGroups(raw []byte) map[string]bool {
	groups := map[string]bool{}
	for pos := 0; pos < len(raw); {
		n := entryAt(raw, pos)
		if n == 0 {
			break
		}
		var e struct {
			Group string `json:"g"`
		}
		if json.Unmarshal(raw[pos+entryHeaderSize:pos+n], &e) == nil && e.Group != "" {
			groups[e.Group] = true
		}
		pos += n
	}
	return groups
}
