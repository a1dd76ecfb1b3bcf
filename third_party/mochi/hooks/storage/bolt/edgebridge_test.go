package bolt

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/stretchr/testify/require"
	"go.etcd.io/bbolt"
)

// openGrouped opens a store in a temp dir; Stop runs at the test's end.
func openGrouped(t *testing.T) *Hook {
	t.Helper()
	h := new(Hook)
	h.SetOpts(logger, nil)
	require.NoError(t, h.Init(&Options{Path: filepath.Join(t.TempDir(), "group.bolt")}))
	t.Cleanup(func() { _ = h.Stop() })
	return h
}

// lastTx is the id of the store's last committed write transaction.
func lastTx(t *testing.T, h *Hook) (id int) {
	require.NoError(t, h.db.View(func(tx *bbolt.Tx) error { id = tx.ID(); return nil }))
	return id
}

// queueBehind has a goroutine commit each of ws, in order, while a
// transaction of the test holds bolt's writer lock: the first write's
// goroutine waits for it in its own transaction, the others are queued
// behind. release rolls the test's transaction back; errs then waits for
// every write's result.
func queueBehind(t *testing.T, h *Hook, ws []*write) (release func(), errs func() []error) {
	t.Helper()
	tx, err := h.db.Begin(true)
	require.NoError(t, err)
	results := make([]chan error, len(ws))
	for i, w := range ws {
		results[i] = make(chan error, 1)
		go func(w *write, res chan error) { res <- h.enqueue(w) }(w, results[i])
		waitQueued(t, h, i+1)
	}
	return func() { require.NoError(t, tx.Rollback()) }, func() []error {
		out := make([]error, len(results))
		for i, r := range results {
			out[i] = <-r
		}
		return out
	}
}

// waitQueued waits until n writes are queued.
func waitQueued(t *testing.T, h *Hook, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.mu.Lock()
		queued := len(h.queue)
		h.mu.Unlock()
		if queued == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued, want %d", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func put(k, v string) *write { return &write{key: []byte(k), val: []byte(v)} }
func del(k string) *write    { return &write{key: []byte(k)} }

func TestEdgebridgeWritesCommittedInGroups(t *testing.T) {
	h := openGrouped(t)
	before := lastTx(t, h)
	ws := make([]*write, 201)
	for i := range ws {
		ws[i] = put(fmt.Sprint("k", i), fmt.Sprint("v", i))
	}
	release, errs := queueBehind(t, h, ws)
	release()
	for _, err := range errs() {
		require.NoError(t, err)
	}
	// The first write's own, then the rest: one transaction each before.
	require.LessOrEqual(t, lastTx(t, h)-before, 2)
	require.NoError(t, h.db.View(func(tx *bbolt.Tx) error {
		for i := range ws {
			require.Equal(t, fmt.Sprint("v", i), string(tx.Bucket([]byte(defaultBucket)).Get(ws[i].key)))
		}
		return nil
	}))
}

func TestEdgebridgeGroupKeepsOrder(t *testing.T) {
	h := openGrouped(t)
	ws := []*write{put("a", "1"), put("sent-then-acked", "x"), del("sent-then-acked"), del("a"), put("a", "2"), put("b", "1")}
	release, errs := queueBehind(t, h, ws)
	release()
	for _, err := range errs() {
		require.NoError(t, err)
	}
	require.NoError(t, h.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(defaultBucket))
		require.Equal(t, "2", string(b.Get([]byte("a"))))
		require.Nil(t, b.Get([]byte("sent-then-acked")))
		require.Equal(t, "1", string(b.Get([]byte("b"))))
		return nil
	}))
}

// A write bolt refuses fails alone, not the others in its group.
func TestEdgebridgeRefusedWriteFailsAlone(t *testing.T) {
	h := openGrouped(t)
	tooLong := put(string(bytes.Repeat([]byte("k"), bbolt.MaxKeySize+1)), "v")
	ws := []*write{put("before", "1"), tooLong, put("after", "1")}
	release, errs := queueBehind(t, h, ws)
	release()
	got := errs()
	require.NoError(t, got[0])
	require.ErrorIs(t, got[1], bbolt.ErrKeyTooLarge)
	require.NoError(t, got[2])
	require.NoError(t, h.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(defaultBucket))
		require.NotNil(t, b.Get([]byte("before")))
		require.NotNil(t, b.Get([]byte("after")))
		return nil
	}))
}

// Stop commits the writes already queued, then refuses new ones.
func TestEdgebridgeStopCommitsQueuedWrites(t *testing.T) {
	h := new(Hook)
	h.SetOpts(logger, nil)
	path := filepath.Join(t.TempDir(), "stop.bolt")
	require.NoError(t, h.Init(&Options{Path: path}))
	ws := []*write{put("queued", "1"), put("also", "1")}
	release, errs := queueBehind(t, h, ws)
	stopped := make(chan error, 1)
	go func() { stopped <- h.Stop() }()
	waitQueued(t, h, len(ws)+1) // Stop's barrier
	release()
	for _, err := range errs() {
		require.NoError(t, err)
	}
	require.NoError(t, <-stopped)
	require.ErrorIs(t, h.setKv("late", &storage.Client{ID: "late"}), storage.ErrDBFileNotOpen)

	require.NoError(t, h.Init(&Options{Path: path}))
	defer h.Stop()
	got := new(storage.Client)
	require.ErrorIs(t, h.getKv("late", got), ErrKeyNotFound)
	require.NoError(t, h.setKv("reopened", &storage.Client{ID: "reopened"}))
	require.NoError(t, h.db.View(func(tx *bbolt.Tx) error {
		require.NotNil(t, tx.Bucket([]byte(defaultBucket)).Get([]byte("queued")))
		return nil
	}))
}

// BenchmarkEdgebridgeInflight stores and deletes a QoS 1 message, as a
// message sent and its PUBACK do, from 1 or 16 writers (ns/op: per message),
// with bolt's options as upstream's users set them (NoSync) and as
// edgebridge does (NoSync, NoFreelistSync: no free-page list written per
// commit), the delete waited for (delKv) or settled (settle, as
// OnQosComplete does).
func BenchmarkEdgebridgeInflight(b *testing.B) {
	for _, o := range []struct {
		name string
		opts bbolt.Options
	}{{"NoSync", bbolt.Options{NoSync: true}}, {"NoFreelistSync", bbolt.Options{NoSync: true, NoFreelistSync: true}}} {
		for _, bench := range []struct {
			name    string
			writers int
			settle  bool
		}{{"1-writers", 1, false}, {"16-writers", 16, false}, {"1-writers-settled", 1, true}, {"16-writers-settled", 16, true}} {
			writers := bench.writers
			b.Run(fmt.Sprint(o.name, "/", bench.name), func(b *testing.B) {
				opts := o.opts
				h := new(Hook)
				h.SetOpts(logger, nil)
				require.NoError(b, h.Init(&Options{Path: filepath.Join(b.TempDir(), "b.bolt"), Options: &opts}))
				defer h.Stop()
				payload := make([]byte, 200)
				b.ResetTimer()
				var wg sync.WaitGroup
				for w := 0; w < writers; w++ {
					wg.Add(1)
					go func(w int) {
						defer wg.Done()
						for i := w; i < b.N; i += writers {
							k := fmt.Sprintf("%s_dev%d:%d", storage.InflightKey, w, i%65535)
							_ = h.setKv(k, &storage.Message{ID: k, T: storage.InflightKey, Payload: payload})
							if bench.settle {
								h.settle(k)
							} else {
								_ = h.delKv(k)
							}
						}
					}(w)
				}
				wg.Wait()
			})
		}
	}
}

// Writes racing Stop, and settled deletes among them, are each either
// committed (a write is in the file when it is opened again) or refused:
// none is lost after it returned nil, none reaches a closed database, and
// nothing deadlocks.
func TestEdgebridgeWritesRacingStop(t *testing.T) {
	h := new(Hook)
	h.SetOpts(logger, nil)
	path := filepath.Join(t.TempDir(), "race.bolt")
	require.NoError(t, h.Init(&Options{Path: path}))
	const writers, each = 8, 200
	var wg sync.WaitGroup
	committed := make([][]string, writers)
	refused := make([]error, writers)
	started := make(chan struct{}, writers)
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				k := fmt.Sprintf("w%d-%d", g, i)
				err := h.commit(k, []byte("v"))
				if i == 0 {
					started <- struct{}{}
				}
				if err == nil {
					committed[g] = append(committed[g], k)
					// and a message stored and settled, as a reply and its PUBACK
					if err = h.commit(k+"-msg", []byte("v")); err == nil {
						h.settle(k + "-msg")
						continue
					}
				}
				refused[g] = err
				return
			}
		}(g)
	}
	for g := 0; g < writers; g++ {
		<-started
	}
	require.NoError(t, h.Stop())
	wg.Wait()
	for _, err := range refused {
		if err != nil {
			require.ErrorIs(t, err, storage.ErrDBFileNotOpen)
		}
	}

	require.NoError(t, h.Init(&Options{Path: path}))
	defer h.Stop()
	require.NoError(t, h.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(defaultBucket))
		for _, keys := range committed {
			for _, k := range keys {
				require.NotNil(t, b.Get([]byte(k)), k)
			}
		}
		return nil
	}))
}

// stored reports whether key is in the store's file.
func stored(t *testing.T, h *Hook, key string) (ok bool) {
	t.Helper()
	require.NoError(t, h.db.View(func(tx *bbolt.Tx) error {
		ok = tx.Bucket([]byte(defaultBucket)).Get([]byte(key)) != nil
		return nil
	}))
	return ok
}

// A settled message's delete is committed in the next write's transaction,
// ahead of it: a message stored and settled and the next one stored cost
// two transactions, not three, and a key stored again after its delete
// (a packet id reused) keeps the new value.
func TestEdgebridgeSettledDeleteRidesWithNextWrite(t *testing.T) {
	h := openGrouped(t)
	require.NoError(t, h.commit("m1", []byte("1")))
	before := lastTx(t, h)
	h.settle("m1")
	require.True(t, stored(t, h, "m1"), "the delete waits for the next write")
	require.NoError(t, h.commit("m2", []byte("2")))
	require.Equal(t, before+1, lastTx(t, h), "the delete and the next write in one transaction")
	require.False(t, stored(t, h, "m1"))
	require.True(t, stored(t, h, "m2"))

	h.settle("m2")
	require.NoError(t, h.commit("m2", []byte("again")))
	require.NoError(t, h.db.View(func(tx *bbolt.Tx) error {
		require.Equal(t, []byte("again"), tx.Bucket([]byte(defaultBucket)).Get([]byte("m2")))
		return nil
	}))
}

// With no write after it, a settled delete is committed on its own within
// settledWithin; Stop commits the ones still waiting; after Stop, settle
// deletes nothing (the database is closed).
func TestEdgebridgeSettledDeleteCommittedAlone(t *testing.T) {
	h := new(Hook)
	h.SetOpts(logger, nil)
	path := filepath.Join(t.TempDir(), "settle.bolt")
	require.NoError(t, h.Init(&Options{Path: path}))
	for _, k := range []string{"m1", "m2", "m3"} {
		require.NoError(t, h.commit(k, []byte("v")))
	}
	h.settle("m1")
	deadline := time.Now().Add(10 * time.Second)
	for stored(t, h, "m1") {
		require.True(t, time.Now().Before(deadline), "a lone settled delete never committed")
		time.Sleep(time.Millisecond)
	}

	h.mu.Lock()
	h.settled = append(h.settled, &write{key: []byte("m2"), settled: true}) // as settle, without its timer
	h.mu.Unlock()
	require.NoError(t, h.Stop())
	h.settle("m3")
	require.NoError(t, h.Init(&Options{Path: path}))
	defer h.Stop()
	require.False(t, stored(t, h, "m2"), "Stop left a settled delete uncommitted")
	require.True(t, stored(t, h, "m3"), "settled after Stop")
}

// More settled deletes than one transaction takes, queued ahead of a
// write (a burst of PUBACKs): the write's writer commits them group by
// group, then its own, and the store goes on taking writes.
func TestEdgebridgeManySettledAheadOfAWrite(t *testing.T) {
	h := openGrouped(t)
	const n = maxGroup*2 + 10
	for i := 0; i < n; i++ {
		require.NoError(t, h.commit(fmt.Sprint("m", i), []byte("v")))
	}
	h.mu.Lock()
	for i := 0; i < n; i++ { // as settle does, without its timer: all of them ahead of the write
		h.settled = append(h.settled, &write{key: []byte(fmt.Sprint("m", i)), settled: true})
	}
	h.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		err := h.commit("after", []byte("v"))
		if err == nil {
			err = h.commit("and-after", []byte("v"))
		}
		done <- err
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("writes after a burst of settled deletes never returned")
	}
	require.False(t, stored(t, h, fmt.Sprint("m", n-1)))
	require.True(t, stored(t, h, "after"))
	require.True(t, stored(t, h, "and-after"))
}
