package schedule

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

func TestQueueOrdersByDue(t *testing.T) {
	var q Queue[string]
	if _, ok := q.Next(); ok {
		t.Fatal("empty queue has a next due time")
	}
	t0 := time.Unix(1000, 0)
	for i, name := range []string{"c", "a", "d", "b"} {
		q.Push(t0.Add(time.Duration([]int{3, 1, 4, 2}[i])*time.Second), name)
	}
	if due, _ := q.Next(); !due.Equal(t0.Add(time.Second)) {
		t.Errorf("got next %v, want t0+1s", due)
	}
	var got []string
	for now := t0; now.Before(t0.Add(5 * time.Second)); now = now.Add(time.Second) {
		for {
			item, ok := q.PopDue(now)
			if !ok {
				break
			}
			got = append(got, item)
		}
		if len(got) != min(4, int(now.Sub(t0)/time.Second)) {
			t.Fatalf("at t0+%s got %v popped", now.Sub(t0), got)
		}
	}
	if !slices.Equal(got, []string{"a", "b", "c", "d"}) || q.Len() != 0 {
		t.Errorf("got %v (left %d), want [a b c d]", got, q.Len())
	}
}

// TestRun: items fire in due order, not arrival order; Run stops when fire
// says so.
func TestRun(t *testing.T) {
	l := NewLater[time.Duration]()
	now := time.Now()
	for _, d := range []time.Duration{100 * time.Millisecond, 0, 50 * time.Millisecond} {
		l.Push(now.Add(d), d)
	}
	var got []time.Duration
	l.Run(context.Background(), func(d time.Duration) bool {
		got = append(got, d)
		return len(got) < 3
	})
	if !slices.Equal(got, []time.Duration{0, 50 * time.Millisecond, 100 * time.Millisecond}) {
		t.Errorf("got %v, want [0 50ms 100ms]", got)
	}
}

// TestRetry: fn runs until it succeeds, each failure reported; a context
// that ends stops the retries.
func TestRetry(t *testing.T) {
	calls, failures := 0, 0
	ok := Retry(context.Background(), func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}, func(error) { failures++ })
	if !ok || calls != 3 || failures != 2 {
		t.Errorf("got ok %v, %d calls, %d failures; want true, 3, 2", ok, calls, failures)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ok = Retry(ctx, func() error { cancel(); return errors.New("down") }, nil)
	if ok {
		t.Error("got true after the context ended, want false")
	}
	if Sleep(ctx, time.Hour) {
		t.Error("Sleep on an ended context reported the full time")
	}
}

// RetryLogged logs a failure once per cause and the recovery once.
func TestRetryLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
		errs := []error{errors.New("refused"), errors.New("refused"), errors.New("refused"), errors.New("unreachable"), nil}
		calls := 0
		ok := RetryLogged(t.Context(), log, "kafka write", func() error { calls++; return errs[calls-1] }, "partition", 3)
		want := `level=WARN msg="kafka write failed; retrying" partition=3 err=refused
level=WARN msg="kafka write failed; retrying" partition=3 err=unreachable
level=INFO msg="kafka write succeeded after failures" partition=3
`
		if !ok || calls != 5 || buf.String() != want {
			t.Fatalf("got ok %v after %d calls, logs:\n%s\nwant:\n%s", ok, calls, buf.String(), want)
		}
	})
}

// Every calls f once a period, from one period after the start, until
// the context ends (virtual time).
func TestEvery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3500*time.Millisecond)
		defer cancel()
		start := time.Now()
		var at []time.Duration
		Every(ctx, time.Second, func(now time.Time) { at = append(at, now.Sub(start)) })
		if want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}; !slices.Equal(at, want) {
			t.Fatalf("called at %v, want %v", at, want)
		}
	})
}
