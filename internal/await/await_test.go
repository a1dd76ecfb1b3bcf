package await

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestCondReturnsOnceItHolds(t *testing.T) {
	n := 0
	err := Cond(context.Background(), time.Minute, "third call", func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("err %v after %d calls, want nil after 3", err, n)
	}
}

func TestCondNamesWhatAndTheLastError(t *testing.T) {
	err := Cond(context.Background(), 50*time.Millisecond, "the broker", func() error { return errors.New("refused") })
	if err == nil || !strings.Contains(err.Error(), "the broker: not after 50ms: refused") {
		t.Fatalf("got %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = Cond(ctx, time.Minute, "x", func() error { return errors.New("refused") })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: got %v", err)
	}
}

type fakeT struct{ failed string }

func (f *fakeT) Helper()                        {}
func (f *fakeT) Fatalf(format string, a ...any) { f.failed = fmt.Sprintf(format, a...) }

func TestTrueFailsTheTestAtTheLimit(t *testing.T) {
	var f fakeT
	True(&f, 50*time.Millisecond, "never", func() bool { return false })
	if !strings.Contains(f.failed, "waiting for never: not after 50ms") {
		t.Fatalf("Fatalf got %q", f.failed)
	}
	f = fakeT{}
	True(&f, time.Minute, "now", func() bool { return true })
	if f.failed != "" {
		t.Fatalf("failed although the condition held: %q", f.failed)
	}
}

func TestFinalEndsTheWaitAtOnce(t *testing.T) {
	exited := errors.New("exited")
	calls := 0
	err := Cond(context.Background(), time.Minute, "the broker", func() error { calls++; return Final(exited) })
	if !errors.Is(err, exited) || calls != 1 || err.Error() != "the broker: exited" {
		t.Fatalf("got %v after %d calls", err, calls)
	}
}

func TestReceive(t *testing.T) {
	ch := make(chan string, 1)
	ch <- "v"
	var f fakeT
	if got := Receive(&f, ch, time.Minute, "value"); got != "v" || f.failed != "" {
		t.Fatalf("got %q, failed %q", got, f.failed)
	}
	if got := Receive(&f, ch, 50*time.Millisecond, "second value"); got != "" || f.failed != "no second value within 50ms" {
		t.Fatalf("got %q, Fatalf got %q", got, f.failed)
	}
}
