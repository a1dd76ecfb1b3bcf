package embedded

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

// kafkaRig is an embedded broker and a client to it.
type kafkaRig struct {
	t   *testing.T
	ctx context.Context
	k   *Kafka
	cl  *kgo.Client
	dir string
}

func newKafkaRig(t *testing.T, dir, addr string, cfg KafkaConfig) *kafkaRig {
	t.Helper()
	cfg.Listen, cfg.DataDir, cfg.NoFsync, cfg.Logger = addr, dir, true, slog.New(slog.DiscardHandler)
	k, err := ListenKafka(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addr()), kgo.AllowAutoTopicCreation(), kgo.MaxVersions(kversion.V2_8_0()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerBatchMaxBytes(1<<20), kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	r := &kafkaRig{t: t, ctx: ctx, k: k, cl: cl, dir: dir}
	t.Cleanup(func() { r.close(); cancel() })
	return r
}

func (r *kafkaRig) close() { r.cl.Close(); r.k.Close() }

// produce writes n records of size bytes to topic's partition.
func (r *kafkaRig) produce(topic string, part int32, n, size int) {
	r.t.Helper()
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Partition: part, Value: make([]byte, size)}
	}
	if err := r.cl.ProduceSync(r.ctx, recs...).FirstErr(); err != nil {
		r.t.Fatal(err)
	}
}

// commit commits offset for group on topic's partition, as an admin does.
func (r *kafkaRig) commit(group, topic string, part int32, offset int64) {
	r.t.Helper()
	req := kmsg.NewPtrOffsetCommitRequest()
	req.Group, req.Generation = group, -1
	rt := kmsg.NewOffsetCommitRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewOffsetCommitRequestTopicPartition()
	rp.Partition, rp.Offset = part, offset
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(r.ctx, r.cl)
	if err != nil || resp.Topics[0].Partitions[0].ErrorCode != 0 {
		r.t.Fatalf("commit %s %d: %v %+v", group, offset, err, resp)
	}
}

// logStart is the partition's first offset, as a consumer sees it.
func (r *kafkaRig) logStart(topic string, part int32) int64 {
	r.t.Helper()
	return r.listOffset(topic, part, -2)
}

// logEnd is the partition's end offset (its high watermark).
func (r *kafkaRig) logEnd(topic string, part int32) int64 {
	r.t.Helper()
	return r.listOffset(topic, part, -1)
}

// listOffset asks for the partition's earliest (-2) or latest (-1) offset.
func (r *kafkaRig) listOffset(topic string, part int32, at int64) int64 {
	r.t.Helper()
	req := kmsg.NewPtrListOffsetsRequest()
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewListOffsetsRequestTopicPartition()
	rp.Partition, rp.Timestamp = part, at
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(r.ctx, r.cl)
	if err != nil {
		r.t.Fatal(err)
	}
	p := resp.Topics[0].Partitions[0]
	if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
		r.t.Fatal(err)
	}
	return p.Offset
}

// partBytes is the size of a partition's files on disk.
func (r *kafkaRig) partBytes(topic string, part int32) int64 {
	r.t.Helper()
	var n int64
	root := partDirOf(r.dir, topic, part)
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return n
}

// partDirOf is a partition's directory in the broker's data dir (kfake's
// layout, persist.go partDir).
func partDirOf(dir, topic string, part int32) string {
	return filepath.Join(dir, "kafka", "partitions", fmt.Sprintf("%s-%d", topic, part))
}

// Storage follows the backlog: records every group has committed are
// deleted once committed for the grace period, whole segments leave the
// disk, and nothing a group has not committed is deleted.
func TestTrimDeletesWhatEveryGroupCommitted(t *testing.T) {
	dir := t.TempDir()
	r := newKafkaRig(t, dir, "127.0.0.1:0", KafkaConfig{Partitions: 2})
	const grace = time.Hour
	tr := newTrimmer(r.k.c, nil, grace, slog.New(slog.DiscardHandler)) // a new broker: no groups logged
	// 12 MiB on partition 0: three 4 MiB segments. Partition 1 gets a few
	// records no group commits.
	r.produce("requests", 0, 192, 64<<10)
	r.produce("requests", 1, 10, 100)
	full := r.partBytes("requests", 0)
	r.commit("backends", "requests", 0, 192)
	r.commit("dapr-sub", "requests", 0, 100)

	t0 := time.Now()
	tr.trim(t0)
	tr.trim(t0.Add(grace - time.Second))
	if got := r.logStart("requests", 0); got != 0 {
		t.Fatalf("log start %d within the grace period, want 0", got)
	}
	tr.trim(t0.Add(grace))
	if got := r.logStart("requests", 0); got != 100 {
		t.Fatalf("log start %d after the grace, want 100 (the slower group's commit)", got)
	}
	if got := r.partBytes("requests", 0); got >= full {
		t.Fatalf("partition 0 holds %d bytes after deleting 100 of 192 records, want fewer than %d (a segment gone)", got, full)
	}
	if got := r.logStart("requests", 1); got != 0 {
		t.Fatalf("partition 1 (committed by no group) starts at %d, want 0", got)
	}

	// The slower group catches up: everything is committed, the partition's
	// segments go but the one holding its last record, which keeps the
	// partition's end across a crash.
	r.commit("dapr-sub", "requests", 0, 192)
	t1 := t0.Add(2 * grace)
	tr.trim(t1)
	tr.trim(t1.Add(grace))
	if got := r.logStart("requests", 0); got != 191 {
		t.Fatalf("log start %d with every record committed, want 191 (the last record kept)", got)
	}
	if got := r.partBytes("requests", 0); got > segmentBytes+128<<10 {
		t.Fatalf("partition 0 holds %d bytes with nothing left to process, want at most one segment", got)
	}
	crashed := t.TempDir() // the files as a kill -9 leaves them
	if err := os.CopyFS(crashed, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	after := newKafkaRig(t, crashed, "127.0.0.1:0", KafkaConfig{Partitions: 2})
	if got := after.logEnd("requests", 0); got != 192 {
		t.Fatalf("log end %d after a crash, want 192: behind the groups' commits, offsets would be handed out again", got)
	}
	after.close()

	// A group that rewinds holds from its new commit on.
	r.produce("requests", 0, 20, 100)
	r.commit("backends", "requests", 0, 212)
	r.commit("dapr-sub", "requests", 0, 200)
	t2 := t1.Add(2 * grace)
	tr.trim(t2)
	r.commit("dapr-sub", "requests", 0, 195)
	tr.trim(t2.Add(grace))
	if got := r.logStart("requests", 0); got != 195 {
		t.Fatalf("log start %d after a group rewound to 195, want 195", got)
	}
}

// A group that committed before a restart holds its records after it,
// before it commits again: the trimmer learns it from the groups log.
func TestTrimKnowsGroupsAfterRestart(t *testing.T) {
	dir := t.TempDir()
	r := newKafkaRig(t, dir, "127.0.0.1:0", KafkaConfig{Partitions: 1})
	r.produce("requests", 0, 50, 100)
	r.commit("dapr-sub", "requests", 0, 10)
	addr := r.k.Addr()
	r.close()

	r = newKafkaRig(t, dir, addr, KafkaConfig{Partitions: 1})
	groupsLog, err := os.ReadFile(filepath.Join(dir, "kafka", "groups.log"))
	if err != nil {
		t.Fatal(err)
	}
	tr := newTrimmer(r.k.c, groupsLog, time.Nanosecond, slog.New(slog.DiscardHandler))
	r.commit("backends", "requests", 0, 50)
	now := time.Now()
	tr.trim(now)
	tr.trim(now.Add(time.Second))
	if got := r.logStart("requests", 0); got != 10 {
		t.Fatalf("log start %d, want 10: the group that committed before the restart still needs the rest", got)
	}
}
