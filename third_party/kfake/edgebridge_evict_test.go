package kfake

// edgebridge: tests of index eviction (index_evict.go). Two brokers take
// the same produces and requests, one keeping every index and one
// evicting every sealed segment's it can (IndexBudget(1)); every answer
// must be the same, before and after a restart, after an orderly close
// and after a crash.

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

const evictTopic = "evict"

// evictPair is a broker that keeps every index and one that evicts.
type evictPair struct {
	dirs [2]string
	cs   [2]*Cluster
	// base is the time the records' timestamps count from, in hours, so
	// retention and timestamp lookups do not move while the test runs.
	base time.Time
}

func newEvictPair(t *testing.T) *evictPair {
	p := &evictPair{dirs: [2]string{t.TempDir(), t.TempDir()}, base: time.Now().Add(-50 * time.Hour).Truncate(time.Millisecond)}
	p.start(t)
	return p
}

func evictOpts(dir string, budget int) []Opt {
	return []Opt{
		DataDir(dir), NumBrokers(1), IndexBudget(budget), SeedTopics(2, evictTopic),
		BrokerConfigs(map[string]string{
			"log.segment.bytes":      "600", // a few batches per segment
			"log.cleaner.backoff.ms": "20",  // retention is applied on this tick
		}),
	}
}

func (p *evictPair) start(t *testing.T) {
	t.Helper()
	for i, budget := range []int{0, 1} {
		c, err := NewCluster(evictOpts(p.dirs[i], budget)...)
		if err != nil {
			t.Fatal(err)
		}
		p.cs[i] = c
	}
}

func (p *evictPair) close() {
	for _, c := range p.cs {
		c.Close()
	}
}

// crash copies each data directory as a kill -9 leaves it, closes the
// brokers and starts new ones on the copies.
func (p *evictPair) crash(t *testing.T) {
	t.Helper()
	for i := range p.dirs {
		to := t.TempDir()
		copyDir(t, p.dirs[i], to)
		p.dirs[i] = to
	}
	p.close()
	p.start(t)
}

// same runs fn against both brokers and fails unless it answers the same.
func (p *evictPair) same(t *testing.T, what string, fn func(*Cluster) any) {
	t.Helper()
	keep, evict := fn(p.cs[0]), fn(p.cs[1])
	if !reflect.DeepEqual(keep, evict) {
		t.Errorf("%s: keeping every index %v, evicting %v", what, keep, evict)
	}
}

// produce writes records one batch at a time, or n at a time, with
// timestamps that go back and forth.
func (p *evictPair) produce(t *testing.T, from, to int) {
	t.Helper()
	ctx := context.Background()
	for _, c := range p.cs {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.AllowAutoTopicCreation(),
			kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerLinger(0), kgo.DefaultProduceTopic(evictTopic))
		if err != nil {
			t.Fatal(err)
		}
		for i := from; i < to; {
			var rs []*kgo.Record
			for range 1 + i%3 { // batches of 1 to 3 records
				ts := p.base.Add(time.Duration(i*7%50) * time.Hour)
				rs = append(rs, &kgo.Record{Partition: int32(i % 2), Key: []byte(strconv.Itoa(i)), Value: fmt.Appendf(nil, "value-%d", i), Timestamp: ts})
				i++
			}
			if err := cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		cl.Close()
	}
}

// records is what a consumer reads from the start of both partitions.
func records(t *testing.T, c *Cluster, n int) any {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{
		evictTopic: {0: kgo.NewOffset().AtStart(), 1: kgo.NewOffset().AtStart()},
	}), kgo.FetchMaxBytes(1000), kgo.FetchMaxPartitionBytes(700))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := map[int32][]string{}
	for seen := 0; seen < n; {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %d of %d records (%d, %d): %v\n%v", seen, n, len(got[0]), len(got[1]), err, got)
		}
		fs.EachRecord(func(r *kgo.Record) {
			got[r.Partition] = append(got[r.Partition], fmt.Sprintf("%d:%s:%d", r.Offset, r.Value, r.Timestamp.UnixMilli()))
			seen++
		})
	}
	return got
}

// offsets is what the broker answers for the listed offsets, by time,
// by epoch and the partitions' sizes on disk.
func (p *evictPair) offsets(t *testing.T, c *Cluster) any {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	var out []string
	add := func(what string, l kadm.ListedOffsets, err error) {
		if err != nil {
			t.Fatal(err)
		}
		l.Each(func(o kadm.ListedOffset) {
			out = append(out, fmt.Sprintf("%s p%d=%d/%d/%v", what, o.Partition, o.Offset, o.LeaderEpoch, o.Err))
		})
	}
	l, err := adm.ListStartOffsets(ctx, evictTopic)
	add("start", l, err)
	l, err = adm.ListEndOffsets(ctx, evictTopic)
	add("end", l, err)
	l, err = adm.ListMaxTimestampOffsets(ctx, evictTopic)
	add("maxts", l, err)
	for _, s := range []int{0, 3, 17, 33, 49, 60} {
		ms := p.base.Add(time.Duration(s) * time.Hour).UnixMilli()
		l, err = adm.ListOffsetsAfterMilli(ctx, ms, evictTopic)
		add("after"+strconv.Itoa(s), l, err)
	}
	var req kadm.OffsetForLeaderEpochRequest
	req.Add(evictTopic, 0, 0)
	req.Add(evictTopic, 1, 0)
	eps, err := adm.OffsetForLeaderEpoch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	for part := range int32(2) {
		o := eps[evictTopic][part]
		out = append(out, fmt.Sprintf("epoch p%d=%d/%d/%v", part, o.EndOffset, o.LeaderEpoch, o.Err))
	}
	dirs, err := adm.DescribeAllLogDirs(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	dirs.Each(func(d kadm.DescribedLogDir) {
		d.Topics.Each(func(p kadm.DescribedLogDirPartition) {
			if p.Topic == evictTopic {
				out = append(out, fmt.Sprintf("size p%d=%d", p.Partition, p.Size))
			}
		})
	})
	slices.Sort(out)
	return out
}

// resident counts the batches whose index entries the broker holds for
// sealed segments, and the sealed segments it has evicted.
func resident(c *Cluster) (sealed, evicted int) {
	c.admin(func() {
		c.data.tps.each(func(_ string, _ int32, pd *partData) {
			for i := range pd.segments[:max(len(pd.segments)-1, 0)] {
				if pd.segments[i].evicted != nil {
					evicted++
				}
				sealed += len(pd.segments[i].index)
			}
		})
	})
	return sealed, evicted
}

func TestEdgebridgeIndexEvictionAnswersAsKept(t *testing.T) {
	p := newEvictPair(t)
	defer func() { p.close() }()

	const n = 300
	p.produce(t, 0, n)
	check := func(stage string, n int) {
		t.Helper()
		p.same(t, stage+": records", func(c *Cluster) any { return records(t, c, n) })
		p.same(t, stage+": offsets", func(c *Cluster) any { return p.offsets(t, c) })
		sealed, evicted := resident(p.cs[1])
		// The budget of 1 keeps the one segment read back last; a
		// segment holds at most a few batches.
		if sealed > 10 || evicted == 0 {
			t.Errorf("%s: the evicting broker holds %d sealed entries and evicted %d segments", stage, sealed, evicted)
		}
		if kept, _ := resident(p.cs[0]); kept < n/3 {
			t.Errorf("%s: the keeping broker holds %d sealed entries", stage, kept)
		}
	}
	check("written", n)

	// A crash: a full replay of every segment.
	p.crash(t)
	check("after a crash", n)

	// Records deleted from below, to the middle of a segment and past
	// whole ones, then more written.
	for _, c := range p.cs {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
		if err != nil {
			t.Fatal(err)
		}
		to := kadm.Offsets{}
		to.AddOffset(evictTopic, 0, 57, -1)
		to.AddOffset(evictTopic, 1, 3, -1)
		_, err = kadm.NewClient(cl).DeleteRecords(context.Background(), to)
		cl.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	p.produce(t, n, n+60)
	check("deleted and appended", n+60-57-3)

	// An orderly close: the snapshot path.
	p.close()
	p.start(t)
	check("after a close", n+60-57-3)
}

// A retention.ms that expires the older half: applied from an evicted
// segment's summary where it can be, the same as from its batches.
func TestEdgebridgeIndexEvictionRetention(t *testing.T) {
	p := newEvictPair(t)
	defer func() { p.close() }()
	p.produce(t, 0, 200)
	for _, c := range p.cs {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
		if err != nil {
			t.Fatal(err)
		}
		// The records are 1-50 h old: 25.5 h expires those 26 h and
		// older for the next half hour.
		_, err = kadm.NewClient(cl).AlterTopicConfigs(context.Background(), []kadm.AlterConfig{{
			Name: "retention.ms", Value: kadm.StringPtr(strconv.Itoa(int((25*time.Hour + 30*time.Minute).Milliseconds()))),
		}}, evictTopic)
		cl.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Retention runs on each broker's own tick: wait until both moved.
	deadline := time.Now().Add(10 * time.Second)
	for {
		moved := 0
		for _, c := range p.cs {
			if startOffset(t, c, 0) > 0 && startOffset(t, c, 1) > 0 {
				moved++
			}
		}
		if moved == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("retention moved no log start within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.same(t, "offsets after retention", func(c *Cluster) any { return p.offsets(t, c) })
}

func startOffset(t *testing.T, c *Cluster, part int32) int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	l, err := kadm.NewClient(cl).ListStartOffsets(context.Background(), evictTopic)
	if err != nil {
		t.Fatal(err)
	}
	o, _ := l.Lookup(evictTopic, part)
	return o.Offset
}
