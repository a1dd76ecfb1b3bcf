package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

func frame(data string) []byte {
	b := make([]byte, entryHeaderSize+len(data))
	binary.LittleEndian.PutUint32(b[0:4], uint32(2+len(data)))
	binary.LittleEndian.PutUint16(b[8:10], 1)
	copy(b[10:], data)
	binary.LittleEndian.PutUint32(b[4:8], crc32.Checksum(b[8:], castagnoli))
	return b
}

func TestRepairLog(t *testing.T) {
	a, b, c := frame(`{"a":1}`), frame(`{"b":2}`), frame(`{"c":3}`)
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name    string
		raw     []byte
		want    []byte
		dropped int
	}{
		{name: "intact", raw: join(a, b, c), want: join(a, b, c)},
		{name: "torn last entry", raw: join(a, b, c[:7]), want: join(a, b), dropped: 7},
		{name: "torn entry in the middle", raw: join(a, b[:12], c), want: join(a, c), dropped: 12},
		{name: "torn header in the middle", raw: join(a, b[:3], b, c), want: join(a, b, c), dropped: 3},
		{name: "garbage between entries", raw: join(a, []byte("\x00\x00\xff\x01junk"), c), want: join(a, c), dropped: 8},
		{name: "empty", raw: nil, want: []byte{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, dropped := repairLog(tc.raw)
			if !bytes.Equal(got, tc.want) || dropped != tc.dropped {
				t.Fatalf("got %q (dropped %d), want %q (dropped %d)", got, dropped, tc.want, tc.dropped)
			}
		})
	}
}

// A commit log torn mid-file (a write cut short by a full disk, with later
// commits appended after it) keeps every complete commit across a restart:
// without the repair, the broker stops reading at the tear and forgets the
// later commits, and a restarted consumer is redelivered what it committed.
func TestTornCommitLogKeepsLaterCommits(t *testing.T) {
	dir := t.TempDir()
	quiet := slog.New(slog.DiscardHandler)
	// start reads dir when called.
	start := func(addr string) *Kafka {
		k, err := ListenKafka(KafkaConfig{Listen: addr, DataDir: dir, Partitions: 1, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	commit := func(k *Kafka, offset int64) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addr()), kgo.AllowAutoTopicCreation(), kgo.MaxVersions(kversion.V2_8_0()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("x")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		req := kmsg.NewPtrOffsetCommitRequest()
		req.Group, req.Generation = "g", -1
		rt := kmsg.NewOffsetCommitRequestTopic()
		rt.Topic = "t"
		rp := kmsg.NewOffsetCommitRequestTopicPartition()
		rp.Partition, rp.Offset = 0, offset
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, cl)
		if err != nil || resp.Topics[0].Partitions[0].ErrorCode != 0 {
			t.Fatalf("commit %d: %v %+v", offset, err, resp)
		}
	}
	committed := func(k *Kafka) int64 {
		cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addr()), kgo.MaxVersions(kversion.V2_8_0()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		req := kmsg.NewPtrOffsetFetchRequest()
		req.Group = "g"
		rt := kmsg.NewOffsetFetchRequestTopic()
		rt.Topic, rt.Partitions = "t", []int32{0}
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, cl)
		if err != nil || len(resp.Topics) == 0 {
			t.Fatalf("fetch offsets: %v %+v", err, resp)
		}
		return resp.Topics[0].Partitions[0].Offset
	}

	k := start("127.0.0.1:0")
	addr := k.Addr()
	commit(k, 1)
	k.Close()
	// A write cut short: half an entry at the end of the commit log.
	groups := filepath.Join(dir, "kafka", "groups.log")
	f, err := os.OpenFile(groups, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(frame(`{"torn":"entry, cut short by a full disk"}`)[:20]); err != nil {
		t.Fatal(err)
	}
	f.Close()
	k = start(addr)
	commit(k, 2) // appended after the tear, as the broker does
	// kill -9 now: the files as they are on disk (a graceful Close would
	// rewrite the log from memory and hide the tear).
	crashed := t.TempDir()
	if err := os.CopyFS(crashed, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	k.Close()

	dir = crashed
	k = start(addr)
	defer k.Close()
	if got := committed(k); got != 2 {
		t.Fatalf("got committed offset %d after restarts, want 2 (the commit after the torn entry)", got)
	}
}
