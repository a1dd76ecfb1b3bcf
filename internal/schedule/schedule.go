// Package schedule is about waiting: a queue that holds items until their
// due time (the redelivery queue of the bridge's retrier and of Dapr
// subscriptions), a context-aware Sleep and a Retry with backoff (and
// RetryLogged, which logs each change of cause once).
package schedule

import (
	"container/heap"
	"context"
	"log/slog"
	"sync"
	"time"
)

// Queue orders items by due time. The zero value is empty and ready. It is
// not safe for concurrent use: one goroutine owns it.
type Queue[T any] struct{ h items[T] }

// Push adds item, due at due.
func (q *Queue[T]) Push(due time.Time, item T) { heap.Push(&q.h, entry[T]{due, item}) }

// Len returns how many items wait.
func (q *Queue[T]) Len() int { return len(q.h) }

// Next returns the earliest due time; ok is false when the queue is empty.
func (q *Queue[T]) Next() (due time.Time, ok bool) {
	if len(q.h) == 0 {
		return time.Time{}, false
	}
	return q.h[0].due, true
}

// PopDue removes and returns the earliest item if it is due at now.
func (q *Queue[T]) PopDue(now time.Time) (item T, ok bool) {
	if len(q.h) == 0 || q.h[0].due.After(now) {
		return item, false
	}
	return heap.Pop(&q.h).(entry[T]).item, true
}

type entry[T any] struct {
	due  time.Time
	item T
}

type items[T any] []entry[T]

func (h items[T]) Len() int           { return len(h) }
func (h items[T]) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h items[T]) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *items[T]) Push(x any)        { *h = append(*h, x.(entry[T])) }
func (h *items[T]) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Later holds items until their due time, for Run to fire; Push is safe
// for concurrent use and never blocks. Make one with NewLater.
type Later[T any] struct {
	mu sync.Mutex
	q  Queue[T]
	up chan struct{} // 1-buffered: an item was pushed
}

// NewLater returns an empty Later.
func NewLater[T any]() *Later[T] { return &Later[T]{up: make(chan struct{}, 1)} }

// Push adds item, due at due.
func (l *Later[T]) Push(due time.Time, item T) {
	l.mu.Lock()
	l.q.Push(due, item)
	l.mu.Unlock()
	select {
	case l.up <- struct{}{}:
	default: // Run is already told
	}
}

// Run calls fire with each item once it is due, earliest first, until ctx
// ends or fire returns false. One goroutine runs it.
func (l *Later[T]) Run(ctx context.Context, fire func(T) bool) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		l.mu.Lock()
		next, ok := l.q.Next()
		l.mu.Unlock()
		if ok {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case <-l.up:
		case <-timer.C:
			for {
				l.mu.Lock()
				item, ok := l.q.PopDue(time.Now())
				l.mu.Unlock()
				if !ok {
					break
				}
				if !fire(item) {
					return
				}
			}
		}
	}
}

// Sleep waits d, or less if ctx ends first; it reports whether the full
// time passed (false: ctx ended).
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Retry delays between attempts: 50ms, doubling, at most 5s.
const (
	retryFirst = 50 * time.Millisecond
	retryMax   = 5 * time.Second
)

// Retry calls fn until it succeeds or ctx ends, waiting 50ms after the
// first failure and twice as long after each next one, up to 5s; failed,
// if not nil, sees each error. It reports whether fn succeeded.
func Retry(ctx context.Context, fn func() error, failed func(error)) bool {
	delay := retryFirst
	for {
		err := fn()
		if err == nil {
			return true
		}
		if failed != nil {
			failed(err)
		}
		if !Sleep(ctx, delay) {
			return false
		}
		delay = min(2*delay, retryMax)
	}
}

// RetryLogged is Retry that logs a failure when it first happens and when
// its cause changes, not at every attempt (a refused login fails the same
// way for hours), and the recovery after failures once. The messages are
// "<what> failed; retrying" and "<what> succeeded after failures", with
// attrs.
func RetryLogged(ctx context.Context, log *slog.Logger, what string, fn func() error, attrs ...any) bool {
	last := ""
	ok := Retry(ctx, fn, func(err error) {
		if msg := err.Error(); msg != last {
			last = msg
			log.Warn(what+" failed; retrying", append(attrs[:len(attrs):len(attrs)], "err", err)...)
		}
	})
	if ok && last != "" {
		log.Info(what+" succeeded after failures", attrs...)
	}
	return ok
}

// Every calls f with the time every d until ctx ends (the first call after d).
func Every(ctx context.Context, d time.Duration, f func(now time.Time)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			f(now)
		}
	}
}
