package bridge

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

// collect takes what is queued after the first message, never more than
// the limit; with a linger it also waits that long for more (kafka.batch_timeout).
func TestCollect(t *testing.T) {
	ctx := context.Background()
	msgs := make(chan int, 10)
	for i := range 5 {
		msgs <- i
	}
	got, ok := collect(ctx, msgs, nil, 3, 0)
	if !ok || len(got) != 3 {
		t.Fatalf("limit 3: got %v %v", got, ok)
	}
	got, ok = collect(ctx, msgs, nil, 10, 0)
	if !ok || len(got) != 2 || got[0] != 3 {
		t.Fatalf("no linger: got %v %v, want the 2 queued", got, ok)
	}

	synctest.Test(t, func(t *testing.T) {
		msgs := make(chan int)
		go func() {
			msgs <- 1
			time.Sleep(40 * time.Millisecond) // within the linger
			msgs <- 2
			time.Sleep(100 * time.Millisecond) // after it
			msgs <- 3
		}()
		start := time.Now()
		got, ok := collect(context.Background(), msgs, nil, 10, 50*time.Millisecond)
		if !ok || len(got) != 2 {
			t.Fatalf("linger 50ms: got %v, want [1 2]", got)
		}
		if waited := time.Since(start); waited != 50*time.Millisecond {
			t.Fatalf("waited %v, want the 50ms linger", waited)
		}
		if got, _ := collect(context.Background(), msgs, nil, 10, 0); len(got) != 1 || got[0] != 3 {
			t.Fatalf("next batch %v", got)
		}
	})

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, ok := collect(cctx, make(chan int), nil, 10, time.Second); ok {
		t.Fatal("collect returned ok after ctx ended without a message")
	}
}
