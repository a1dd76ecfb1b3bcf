package kfake

// edgebridge: tests of group commit (group_commit.go) on the real file
// system, with the segment and index files' fsyncs gated or failed.

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// gatedFS is the real file system whose segment and index fsyncs wait for
// gate (while it is not nil) and fail while failSyncs > 0.
type gatedFS struct {
	osFS
	mu        sync.Mutex
	gate      chan struct{}
	waiting   int // fsyncs waiting at the gate now
	failSyncs int
}

type gatedFile struct {
	file
	fs *gatedFS
}

func (g *gatedFS) OpenFile(name string, flag int, perm os.FileMode) (file, error) {
	f, err := g.osFS.OpenFile(name, flag, perm)
	if err != nil || !(strings.HasSuffix(name, ".dat") || strings.HasSuffix(name, ".idx")) {
		return f, err
	}
	return &gatedFile{file: f, fs: g}, nil
}

func (f *gatedFile) Sync() error {
	g := f.fs
	g.mu.Lock()
	gate := g.gate
	g.waiting++
	fail := g.failSyncs > 0
	if fail {
		g.failSyncs--
	}
	g.mu.Unlock()
	if gate != nil {
		<-gate
	}
	g.mu.Lock()
	g.waiting--
	g.mu.Unlock()
	if fail {
		return errors.New("gated: injected fsync failure")
	}
	return f.file.Sync()
}

func (g *gatedFS) waitingNow() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting
}

// A produce is acknowledged only after its partition's segment and index
// were fsynced, and the two fsyncs run at the same time (upstream ran them
// one after the other in the request loop).
func TestEdgebridgeGroupCommitAcksAfterFsync(t *testing.T) {
	gate := make(chan struct{})
	g := &gatedFS{gate: gate}
	c := newCluster(t, DataDir(t.TempDir()), SyncWrites(), NumBrokers(1), SeedTopics(1, "gc"), withFS(g))
	cl := newPlainClient(t, c, kgo.DisableIdempotentWrite(), kgo.DefaultProduceTopic("gc"))
	var release sync.Once
	open := func() { release.Do(func() { close(gate) }) }
	t.Cleanup(open) // before the cluster's Close, which a held fsync would block
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	done := make(chan error, 1)
	go func() { done <- cl.ProduceSync(ctx, &kgo.Record{Value: []byte("v")}).FirstErr() }()
	for g.waitingNow() < 2 {
		select {
		case err := <-done:
			t.Fatalf("produce answered while its fsyncs had not both started: %v", err)
		case <-ctx.Done():
			t.Fatalf("segment and index fsyncs never waited together (waiting %d)", g.waitingNow())
		case <-time.After(5 * time.Millisecond):
		}
	}
	select {
	case err := <-done:
		t.Fatalf("produce acknowledged before its fsyncs returned: %v", err)
	default:
	}
	open()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A failed fsync fails the produce with KAFKA_STORAGE_ERROR: the producer
// sends the record again, so the log holds it twice (upstream ignored the
// error and acknowledged a record that may not be on disk).
func TestEdgebridgeGroupCommitFsyncFailure(t *testing.T) {
	g := &gatedFS{failSyncs: 1}
	c := newCluster(t, DataDir(t.TempDir()), SyncWrites(), NumBrokers(1), SeedTopics(1, "gc"), withFS(g))
	cl := newPlainClient(t, c, kgo.DisableIdempotentWrite(), kgo.DefaultProduceTopic("gc"),
		kgo.ConsumeTopics("gc"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.RetryBackoffFn(func(int) time.Duration { return 10 * time.Millisecond }), kgo.MetadataMinAge(10*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 2 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	if len(got) != 2 || got[0] != "v" || got[1] != "v" {
		t.Fatalf("records %q, want the record twice: written, refused for its failed fsync, written again", got)
	}
}
