package kfake

// edgebridge: the group commit fsyncs a partition's segment but not its
// index (group_commit.go), so a crash can lose the index's tail. These
// tests show that an index entry holds nothing its batch does not, and
// that a start after such a crash writes the lost entries again, so later
// appends stay beside their batches.

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Every entry the broker writes equals the one derived from its batch:
// plain batches, batches under two leader epochs, transactional batches
// (committed and aborted) and the broker's commit and abort markers.
func TestEdgebridgeIndexDerivedFromBatches(t *testing.T) {
	dir := t.TempDir()
	c := newCluster(t, DataDir(dir), SyncWrites(), NumBrokers(2), SeedTopics(1, "ix"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	plain := newPlainClient(t, c, kgo.DefaultProduceTopic("ix"))
	produce := func(cl *kgo.Client, v string) {
		t.Helper()
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	produce(plain, "a")
	produce(plain, "b")
	leader := c.LeaderFor("ix", 0)
	if err := c.MoveTopicPartition("ix", 0, 1-leader); err != nil { // a new leader epoch
		t.Fatal(err)
	}
	produce(plain, "c")

	txn := newPlainClient(t, c, kgo.DefaultProduceTopic("ix"), kgo.TransactionalID("ix-txn"))
	for _, end := range []kgo.TransactionEndTry{kgo.TryCommit, kgo.TryAbort} {
		if err := txn.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		produce(txn, "t")
		if err := txn.EndTransaction(ctx, end); err != nil {
			t.Fatal(err)
		}
	}
	produce(plain, "d")
	c.Close() // an orderly close fsyncs the index

	raw, idxRaw := readSegment(t, dir, "ix")
	var stored, derived []*partBatch
	_, n, missing := parseSegment(raw, idxRaw, func(_ int, b *partBatch) { stored = append(stored, b) })
	if missing != 0 {
		t.Fatalf("%d of %d entries missing after an orderly close", missing, n)
	}
	_, _, missing = parseSegment(raw, nil, func(_ int, b *partBatch) { derived = append(derived, b) })
	if missing != n || len(derived) != n {
		t.Fatalf("derived %d entries (%d missing) of %d batches", len(derived), missing, n)
	}
	var epochs, inTx, markers int
	for i := range stored {
		s, d := stored[i], derived[i]
		if s.epoch != d.epoch || s.inTx != d.inTx {
			t.Errorf("batch %d (attributes %#x): stored epoch %d inTx %v, derived epoch %d inTx %v",
				i, s.Attributes, s.epoch, s.inTx, d.epoch, d.inTx)
		}
		if i > 0 && s.epoch != stored[i-1].epoch {
			epochs++
		}
		if s.inTx {
			inTx++
		}
		if s.Attributes&0x20 != 0 {
			markers++
		}
	}
	if epochs == 0 || inTx != 2 || markers != 2 {
		t.Fatalf("the log has %d epoch changes, %d transactional batches and %d markers; the test needs 1+, 2 and 2", epochs, inTx, markers)
	}
}

// A crash that loses the index's tail, or tears it, loses no record, and
// the start after it writes the index again: the records produced after it
// get entries beside their own batches, and the next start finds every
// entry intact.
func TestEdgebridgeIndexLostInCrash(t *testing.T) {
	const batches = 10
	running := t.TempDir()
	c := newCluster(t, DataDir(running), SyncWrites(), NumBrokers(1), SeedTopics(1, "ix"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	produceN := func(c *Cluster, n int) {
		t.Helper()
		cl := newPlainClient(t, c, kgo.DefaultProduceTopic("ix"))
		for range n { // one batch each
			if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("v")}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		cl.Close()
	}
	consume := func(c *Cluster, n int) {
		t.Helper()
		cl := newPlainClient(t, c, kgo.ConsumeTopics("ix"), kgo.FetchMaxWait(100*time.Millisecond))
		if got := consumeN(t, cl, n, 10*time.Second); len(got) != n {
			t.Fatalf("consumed %d records, want %d", len(got), n)
		}
		cl.Close()
	}
	// wholeIndex checks that dir's index has an intact entry for each of
	// the n batches of its segment.
	wholeIndex := func(dir string, n int) {
		t.Helper()
		raw, idxRaw := readSegment(t, dir, "ix")
		_, got, missing := parseSegment(raw, idxRaw, func(int, *partBatch) {})
		if got != n || missing != 0 || len(idxRaw) != n*indexEntrySize {
			t.Fatalf("%d batches (want %d), %d index entries missing, index %d bytes (want %d)",
				got, n, missing, len(idxRaw), n*indexEntrySize)
		}
	}
	produceN(c, batches)

	// The crash: what the disk held at this point (every segment write was
	// fsynced before its produce was answered), less the index's last
	// seven entries, never fsynced.
	crashed := t.TempDir()
	if err := os.CopyFS(crashed, os.DirFS(running)); err != nil {
		t.Fatal(err)
	}
	_, idxPath := segmentPaths(t, crashed, "ix")
	if err := os.Truncate(idxPath, 3*indexEntrySize); err != nil {
		t.Fatal(err)
	}
	c2 := newCluster(t, DataDir(crashed), SyncWrites(), NumBrokers(1))
	consume(c2, batches)
	produceN(c2, batches)
	c2.Close()
	wholeIndex(crashed, 2*batches)

	// A torn index: three entries and part of a fourth.
	if err := os.Truncate(idxPath, 3*indexEntrySize+7); err != nil {
		t.Fatal(err)
	}
	c3 := newCluster(t, DataDir(crashed), SyncWrites(), NumBrokers(1))
	consume(c3, 2*batches)
	produceN(c3, batches)
	c3.Close()
	wholeIndex(crashed, 3*batches)
	consume(newCluster(t, DataDir(crashed), NumBrokers(1)), 3*batches)
}

// segmentPaths returns the paths of the one segment of topic's partition 0
// and of its index.
func segmentPaths(t *testing.T, dataDir, topic string) (seg, idx string) {
	t.Helper()
	pdir := partDir(dataDir, topic, 0)
	ents, err := os.ReadDir(pdir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".dat") {
			if seg != "" {
				t.Fatalf("more than one segment in %s", pdir)
			}
			seg = filepath.Join(pdir, e.Name())
			idx = strings.TrimSuffix(seg, ".dat") + ".idx"
		}
	}
	if seg == "" {
		t.Fatalf("no segment in %s", pdir)
	}
	return seg, idx
}

// readSegment returns the bytes of the one segment of topic's partition 0
// and of its index.
func readSegment(t *testing.T, dataDir, topic string) (raw, idxRaw []byte) {
	t.Helper()
	seg, idx := segmentPaths(t, dataDir, topic)
	raw, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	if idxRaw, err = os.ReadFile(idx); err != nil {
		t.Fatal(err)
	}
	return raw, idxRaw
}
