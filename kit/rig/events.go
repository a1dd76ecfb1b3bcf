package rig

import (
	"slices"
	"sync"
	"time"

	"github.com/edgebridge/edgebridge/grpcout"
)

// PoolEvents records the backend pool's events with the time each
// happened (virtual time in a synctest bubble): pass Hook to
// grpcout.WithEventHook.
type PoolEvents struct {
	mu  sync.Mutex
	all []PoolEvent
}

// PoolEvent is one event and when it happened.
type PoolEvent struct {
	At time.Time
	grpcout.Event
}

// Hook records e.
func (l *PoolEvents) Hook(e grpcout.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, PoolEvent{time.Now(), e})
}

// All is every event so far.
func (l *PoolEvents) All() []PoolEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.all)
}

// Of is the events of one kind.
func (l *PoolEvents) Of(kind grpcout.EventKind) []PoolEvent {
	return slices.DeleteFunc(l.All(), func(e PoolEvent) bool { return e.Kind != kind })
}

// First is the first event at or after after that matches.
func (l *PoolEvents) First(after time.Time, match func(grpcout.Event) bool) (PoolEvent, bool) {
	for _, e := range l.All() {
		if !e.At.Before(after) && match(e.Event) {
			return e, true
		}
	}
	return PoolEvent{}, false
}

// Reasons counts the StreamDown events by reason.
func (l *PoolEvents) Reasons() map[grpcout.Reason]int {
	out := map[grpcout.Reason]int{}
	for _, e := range l.Of(grpcout.StreamDown) {
		out[e.Reason]++
	}
	return out
}
