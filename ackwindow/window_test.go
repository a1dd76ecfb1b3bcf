package ackwindow

import (
	"context"
	"errors"
	"maps"
	"testing"
	"testing/synctest"
	"time"
)

type op struct {
	add  bool // add, else ack
	part int32
	off  int64
	ok   bool // expected Ack result
}

func add(p int32, o int64) op          { return op{add: true, part: p, off: o} }
func ack(p int32, o int64, ok bool) op { return op{part: p, off: o, ok: ok} }

func TestWindowFloor(t *testing.T) {
	tests := []struct {
		name     string
		ops      []op
		want     map[int32]int64 // Commits() after ops
		inflight int
	}{
		{name: "in order", ops: []op{add(0, 10), add(0, 11), add(0, 12), ack(0, 10, true), ack(0, 11, true), ack(0, 12, true)},
			want: map[int32]int64{0: 13}},
		{name: "gap holds the floor", ops: []op{add(0, 0), add(0, 1), add(0, 2), ack(0, 0, true), ack(0, 2, true)},
			want: map[int32]int64{0: 1}, inflight: 2},
		{name: "gap filled", ops: []op{add(0, 0), add(0, 1), add(0, 2), ack(0, 2, true), ack(0, 1, true), ack(0, 0, true)},
			want: map[int32]int64{0: 3}},
		{name: "nothing acked, nothing to commit", ops: []op{add(0, 5), add(0, 6), ack(0, 6, true)},
			want: nil, inflight: 2},
		{name: "out of order across partitions", ops: []op{add(0, 0), add(1, 100), add(0, 1), add(1, 101), ack(1, 101, true), ack(0, 0, true), ack(1, 100, true)},
			want: map[int32]int64{0: 1, 1: 102}, inflight: 1},
		{name: "duplicate ack ignored", ops: []op{add(0, 0), add(0, 1), ack(0, 0, true), ack(0, 0, false), ack(0, 1, true), ack(0, 1, false)},
			want: map[int32]int64{0: 2}},
		{name: "ack of unknown offset", ops: []op{add(0, 4), ack(0, 3, false), ack(0, 5, false), ack(7, 4, false)},
			want: nil, inflight: 1},
		{name: "offset gaps from compaction", ops: []op{add(0, 10), add(0, 20), add(0, 35), ack(0, 20, true), ack(0, 10, true)},
			want: map[int32]int64{0: 21}, inflight: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := New(16)
			for _, o := range tc.ops {
				if o.add {
					if err := w.Add(context.Background(), o.part, o.off, time.Time{}); err != nil {
						t.Fatalf("Add(%d,%d): %v", o.part, o.off, err)
					}
					continue
				}
				if got := w.Ack(o.part, o.off); got != o.ok {
					t.Fatalf("Ack(%d,%d) = %v, want %v", o.part, o.off, got, o.ok)
				}
			}
			if got := w.TakeCommits(); !maps.Equal(got, tc.want) {
				t.Fatalf("got commits %v, want %v", got, tc.want)
			}
			if got := w.TakeCommits(); got != nil {
				t.Fatalf("second Commits got %v, want nil", got)
			}
			if got := w.InFlight(); got != tc.inflight {
				t.Fatalf("got in-flight %d, want %d", got, tc.inflight)
			}
		})
	}
}

func TestAssignStartsAtCommitted(t *testing.T) {
	w := New(4)
	w.Assign(3, 40)
	if f, ok := w.Floor(3); !ok || f != 40 {
		t.Fatalf("got floor %d,%v want 40,true", f, ok)
	}
	if err := w.Add(context.Background(), 3, 39, time.Time{}); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("got %v, want ErrOutOfOrder for an offset below the floor", err)
	}
	if err := w.Add(context.Background(), 3, 42, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Add(context.Background(), 3, 42, time.Time{}); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("got %v, want ErrOutOfOrder for a repeated offset", err)
	}
	if w.InFlight() != 1 {
		t.Fatalf("a refused Add must not hold a slot: in-flight %d", w.InFlight())
	}
	w.Ack(3, 42)
	if got := w.TakeCommits(); got[3] != 43 {
		t.Fatalf("got %v, want floor 43", got)
	}
}

func TestCapacityBlocks(t *testing.T) {
	w := New(2)
	ctx := context.Background()
	_ = w.Add(ctx, 0, 0, time.Time{})
	_ = w.Add(ctx, 0, 1, time.Time{})

	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := w.Add(short, 0, 2, time.Time{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Add on a full window got %v, want it to block until the deadline", err)
	}

	done := make(chan error, 1)
	go func() { done <- w.Add(ctx, 0, 2, time.Time{}) }()
	// Acking 1 does not free a slot: 0 is still un-acked and holds the floor.
	w.Ack(0, 1)
	select {
	case err := <-done:
		t.Fatalf("Add returned %v while the window was still full", err)
	default:
	}
	w.Ack(0, 0) // floor moves past 0 and 1: two slots free
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := w.InFlight(); got != 1 {
		t.Fatalf("got in-flight %d, want 1", got)
	}
}

func TestRevoke(t *testing.T) {
	w := New(3)
	ctx := context.Background()
	_ = w.Add(ctx, 0, 0, time.Time{})
	_ = w.Add(ctx, 0, 1, time.Time{})
	_ = w.Add(ctx, 1, 7, time.Time{})
	w.Ack(0, 0)
	if got := w.Revoke(0); got != 1 {
		t.Fatalf("revoke dropped %d, want 1", got)
	}
	if w.Ack(0, 1) {
		t.Fatal("ACK of a revoked partition's record must be ignored")
	}
	if got := w.TakeCommits(); !maps.Equal(got, map[int32]int64{}) && got != nil {
		t.Fatalf("revoked partition still reported commits %v", got)
	}
	if w.InFlight() != 1 {
		t.Fatalf("got in-flight %d, want 1", w.InFlight())
	}
	// The freed slots are usable.
	if err := w.Add(ctx, 2, 0, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Add(ctx, 2, 1, time.Time{}); err != nil {
		t.Fatal(err)
	}
}

func TestWaitEmpty(t *testing.T) {
	w := New(4)
	ctx := context.Background()
	if err := w.WaitEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	_ = w.Add(ctx, 0, 0, time.Time{})
	done := make(chan error, 1)
	go func() { done <- w.WaitEmpty(ctx) }()
	w.Ack(0, 0)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAddAck(b *testing.B) {
	w := New(128)
	ctx := context.Background()
	b.ReportAllocs()
	for i := range b.N {
		off := int64(i)
		if err := w.Add(ctx, int32(i%8), off, time.Time{}); err != nil {
			b.Fatal(err)
		}
		w.Ack(int32(i%8), off)
	}
}

// SetCap grows the window at once for a blocked Add and shrinks it without
// recalling anything: Add waits until the records held are below it.
func TestSetCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := New(2)
		ctx := t.Context()
		for off := range int64(2) {
			if err := w.Add(ctx, 0, off, time.Time{}); err != nil {
				t.Fatal(err)
			}
		}
		added := make(chan error, 1)
		blocked := func() bool {
			synctest.Wait() // every goroutine of the test is blocked
			return len(added) == 0
		}
		go func() { added <- w.Add(ctx, 0, 2, time.Time{}) }()
		if !blocked() {
			t.Fatalf("Add returned %v on a full window, want it blocked", <-added)
		}
		w.SetCap(3)
		if err := <-added; err != nil {
			t.Fatal(err)
		}
		w.SetCap(1) // 3 held: the next Add waits for 3 ACKs
		go func() { added <- w.Add(ctx, 0, 3, time.Time{}) }()
		for off := range int64(3) {
			if !blocked() {
				t.Fatalf("Add returned with %d held and capacity 1", w.InFlight())
			}
			w.Ack(0, off)
		}
		if err := <-added; err != nil {
			t.Fatal(err)
		}
		if w.Cap() != 1 || w.InFlight() != 1 {
			t.Fatalf("got cap %d in flight %d, want 1 and 1", w.Cap(), w.InFlight())
		}
	})
}

// Oldest is the write time of the oldest record not yet acknowledged, over
// every partition; acknowledging it moves Oldest to the next one.
func TestOldest(t *testing.T) {
	w := New(8)
	ctx := context.Background()
	if _, ok := w.Oldest(); ok {
		t.Fatal("Oldest of an empty window: got ok, want none")
	}
	t0 := time.Unix(1000, 0)
	_ = w.Add(ctx, 0, 10, t0.Add(2*time.Second))
	_ = w.Add(ctx, 0, 11, t0.Add(5*time.Second))
	_ = w.Add(ctx, 1, 3, t0.Add(3*time.Second))
	for _, step := range []struct {
		ack  int64
		part int32
		want time.Time
		ok   bool
	}{
		{ack: -1, want: t0.Add(2 * time.Second), ok: true},
		{part: 0, ack: 11, want: t0.Add(2 * time.Second), ok: true}, // not the floor: 10 still waits
		{part: 0, ack: 10, want: t0.Add(3 * time.Second), ok: true},
		{part: 1, ack: 3, ok: false},
	} {
		if step.ack >= 0 {
			w.Ack(step.part, step.ack)
		}
		got, ok := w.Oldest()
		if ok != step.ok || !got.Equal(step.want) {
			t.Fatalf("after ack %d/%d: got %v %v, want %v %v", step.part, step.ack, got, ok, step.want, step.ok)
		}
	}
}
