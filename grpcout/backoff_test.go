package grpcout

import (
	"testing"
	"time"
)

func TestBackoffSchedule(t *testing.T) {
	b := Config{Targets: []string{"x:1"}}.withDefaults().Backoff
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30}
	d := b.Initial
	for i, w := range want {
		if d != w*time.Second {
			t.Fatalf("step %d: got %s, want %s", i, d, w*time.Second)
		}
		d = b.next(d)
	}
	for range 1000 {
		j := b.jittered(10 * time.Second)
		if j < 8*time.Second || j > 12*time.Second {
			t.Fatalf("got jittered %s, want within ±20%% of 10s", j)
		}
	}
	if b.jittered(0) != 0 {
		t.Fatal("no delay must stay no delay")
	}
}
