// Package ackwindow tracks Kafka records that were fetched but not yet
// acknowledged by a backend, and computes, per partition, the offset that is
// safe to commit: the contiguous acknowledged floor, never "the highest
// acknowledged".
//
// The window is bounded. Add blocks while it is full, which stops fetching
// and leaves the backlog on Kafka's disk instead of in memory. The bound can
// change while records are held (SetCap): the bridge sizes it from the
// backend streams that are up.
package ackwindow

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// DefaultSize is the product's window per backend stream and per Dapr
// subscription: how many deliveries may be un-ACKed at once.
const DefaultSize = 128

// ErrOutOfOrder is returned by Add when a partition's offsets do not increase.
var ErrOutOfOrder = errors.New("ackwindow: offset not above the partition's last offset")

// Window is safe for concurrent use.
type Window struct {
	mu       sync.Mutex
	capacity int // the most records held
	held     int // records added and not yet below a floor or revoked
	parts    map[int32]*partition
	room     chan struct{} // closed and replaced when held drops or capacity grows, if waiters > 0
	waiters  int           // Adds blocked on room
	emptied  chan struct{} // made by WaitEmpty, closed (and dropped) when the window becomes empty
}

// keepEntries is the largest backing array (entries) a partition keeps
// while it holds no record.
const keepEntries = 4096

type partition struct {
	entries []entry // in offset order; entries[0] is the oldest un-committable record
	base    []entry // entries' backing array from its start: reused when entries empties
	floor   int64   // next offset to commit; -1 until known
	dirty   bool    // floor moved since the last Commits
}

type entry struct {
	offset int64
	acked  bool
	at     time.Time // when the record was written (its Kafka timestamp)
}

// New returns a window holding at most capacity un-committed records
// (capacity < 1 is treated as 1).
func New(capacity int) *Window {
	return &Window{
		capacity: max(capacity, 1),
		parts:    make(map[int32]*partition),
		room:     make(chan struct{}),
	}
}

// Cap returns the window's capacity.
func (w *Window) Cap() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.capacity
}

// SetCap changes the capacity (n < 1 is treated as 1). Growing it wakes
// blocked Adds at once; shrinking it recalls nothing: Add blocks until the
// records held are below the new capacity.
func (w *Window) SetCap(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n = max(n, 1)
	grew := n > w.capacity
	w.capacity = n
	if grew {
		w.signalRoom()
	}
}

// Assign starts tracking a partition whose consumption begins at offset
// (the committed offset). Until a record is acknowledged the floor is offset.
// Assigning a tracked partition resets it; its in-flight records are dropped.
func (w *Window) Assign(part int32, offset int64) {
	w.Revoke(part)
	w.mu.Lock()
	w.parts[part] = &partition{floor: offset}
	w.mu.Unlock()
}

// Add records that offset of part, written at at (its Kafka timestamp;
// zero if unknown), was fetched. It blocks while the window is full and
// returns ctx.Err() if ctx ends first. Offsets of a partition must be added
// in increasing order.
func (w *Window) Add(ctx context.Context, part int32, offset int64, at time.Time) error {
	w.mu.Lock()
	for w.held >= w.capacity {
		room := w.room
		w.waiters++
		w.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			w.mu.Lock()
			w.waiters--
			w.mu.Unlock()
			return ctx.Err()
		}
		w.mu.Lock()
		w.waiters--
	}
	defer w.mu.Unlock()
	p := w.parts[part]
	if p == nil {
		p = &partition{floor: offset}
		w.parts[part] = p
	}
	if n := len(p.entries); (n > 0 && offset <= p.entries[n-1].offset) || offset < p.floor {
		return fmt.Errorf("%w: partition %d offset %d", ErrOutOfOrder, part, offset)
	}
	if len(p.entries) == 0 {
		p.entries = p.base[:0] // a window that drains after each record allocates nothing
	}
	p.entries = append(p.entries, entry{offset: offset, at: at})
	if cap(p.entries) > cap(p.base) { // append moved entries to a new array
		p.base = p.entries[:0]
	}
	w.held++
	return nil
}

// Oldest returns when the oldest record not yet acknowledged was written:
// the first un-acknowledged record of each partition, the oldest of them.
// False when the window holds none (with a known time).
func (w *Window) Oldest() (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var oldest time.Time
	for _, p := range w.parts {
		if len(p.entries) == 0 || p.entries[0].at.IsZero() {
			continue
		}
		if at := p.entries[0].at; oldest.IsZero() || at.Before(oldest) {
			oldest = at
		}
	}
	return oldest, !oldest.IsZero()
}

// Ack marks offset of part acknowledged. It returns false if the record is
// not in the window (already acknowledged, revoked, or never added), so a
// duplicate ACK has no effect.
func (w *Window) Ack(part int32, offset int64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.parts[part]
	if p == nil {
		return false
	}
	i := sort.Search(len(p.entries), func(i int) bool { return p.entries[i].offset >= offset })
	if i == len(p.entries) || p.entries[i].offset != offset || p.entries[i].acked {
		return false
	}
	p.entries[i].acked = true
	// Advance over the contiguous acknowledged prefix.
	n := 0
	for n < len(p.entries) && p.entries[n].acked {
		n++
	}
	if n > 0 {
		p.floor = p.entries[n-1].offset + 1
		p.dirty = true
		p.entries = p.entries[n:]
		if len(p.entries) == 0 {
			p.entries = nil
			if cap(p.base) > keepEntries {
				p.base = nil // let a large backing array go
			}
		}
		w.release(n)
	}
	return true
}

// Revoke stops tracking the partitions (a rebalance took them away). Their
// un-acknowledged records are dropped; Kafka redelivers them to the new owner.
// It returns how many in-flight records were dropped.
func (w *Window) Revoke(parts ...int32) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	dropped := 0
	for _, part := range parts {
		if p := w.parts[part]; p != nil {
			dropped += len(p.entries)
			delete(w.parts, part)
		}
	}
	if dropped > 0 {
		w.release(dropped)
	}
	return dropped
}

// TakeCommits returns the floor of every partition whose floor moved since
// the previous call, and forgets that they moved: the offsets to commit. The
// caller commits them as given.
func (w *Window) TakeCommits() map[int32]int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out map[int32]int64
	for part, p := range w.parts {
		if p.dirty {
			if out == nil {
				out = make(map[int32]int64)
			}
			out[part] = p.floor
			p.dirty = false
		}
	}
	return out
}

// Floor returns the next offset to commit for part, and whether part is tracked.
func (w *Window) Floor(part int32) (int64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.parts[part]
	if p == nil {
		return 0, false
	}
	return p.floor, true
}

// InFlight returns the number of records held (fetched and not yet below a
// partition's floor).
func (w *Window) InFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.held
}

// WaitEmpty blocks until the window holds no records or ctx ends.
func (w *Window) WaitEmpty(ctx context.Context) error {
	for {
		w.mu.Lock()
		empty := w.held == 0
		if !empty && w.emptied == nil {
			w.emptied = make(chan struct{})
		}
		ch := w.emptied
		w.mu.Unlock()
		if empty {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release frees n records' room, waking blocked Adds and, if the window
// is now empty, WaitEmpty callers; w.mu must be held.
func (w *Window) release(n int) {
	w.held -= n
	w.signalRoom()
	if w.held == 0 && w.emptied != nil {
		close(w.emptied)
		w.emptied = nil
	}
}

// signalRoom wakes blocked Adds; w.mu must be held.
func (w *Window) signalRoom() {
	if w.waiters > 0 {
		close(w.room)
		w.room = make(chan struct{})
	}
}
