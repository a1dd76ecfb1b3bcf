package grpcout

import (
	"context"
	"slices"
	"testing"
	"time"
)

// The interval doubles after 3 slow pongs or 3 from a backend over 90%
// loaded, shrinks by a third after 5 fast ones from an idle backend, and
// stays within [MinInterval, MaxInterval].
func TestPacer(t *testing.T) {
	hb := Heartbeat{MinInterval: time.Second, MaxInterval: 8 * time.Second, SlowRTT: 400 * time.Millisecond}
	tests := []struct {
		name string
		rtt  time.Duration
		load uint32
		n    int
		want time.Duration
	}{
		{name: "slow link", rtt: time.Second, n: 3, want: 6 * time.Second},
		{name: "loaded backend", rtt: time.Millisecond, load: 95, n: 3, want: 6 * time.Second},
		{name: "two slow are not enough", rtt: time.Second, n: 2, want: 3 * time.Second},
		{name: "capped at max", rtt: time.Second, n: 30, want: 8 * time.Second},
		{name: "fast and idle", rtt: time.Millisecond, load: 10, n: 5, want: 2 * time.Second},
		{name: "fast but half loaded: unchanged", rtt: time.Millisecond, load: 60, n: 20, want: 3 * time.Second},
		{name: "floored at min", rtt: time.Millisecond, n: 100, want: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPacer(hb, 3*time.Second)
			var got time.Duration
			for range tc.n {
				got = p.observe(tc.rtt, tc.load)
			}
			if got != tc.want {
				t.Fatalf("got interval %s, want %s", got, tc.want)
			}
		})
	}
}

// Targets resolve by DNS (here /etc/hosts); IP literals stay as they are.
func TestLookup(t *testing.T) {
	got, err := lookup(context.Background(), "127.0.0.1:7070")
	if err != nil || !slices.Equal(got, []string{"127.0.0.1:7070"}) {
		t.Fatalf("IP literal: got %v, %v", got, err)
	}
	got, err = lookup(context.Background(), "localhost:7070")
	if err != nil || !slices.Contains(got, "127.0.0.1:7070") {
		t.Fatalf("localhost: got %v, %v; want 127.0.0.1:7070 among them", got, err)
	}
	if _, err := lookup(context.Background(), "no-port"); err == nil {
		t.Fatal("a target without a port resolved")
	}
}
