//go:build !race

package ackwindow

import (
	"context"
	"testing"
	"time"
)

// A record in and out of the window, at steady state: tracking costs no
// allocation per message (see bridge/allocs_test.go for why not -race).
func TestAddAckAllocs(t *testing.T) {
	w := New(128)
	ctx := context.Background()
	var off int64
	got := testing.AllocsPerRun(1000, func() {
		if err := w.Add(ctx, 3, off, time.Time{}); err != nil {
			t.Fatal(err)
		}
		w.Ack(3, off)
		off++
	})
	if got > 0 {
		t.Errorf("Add and Ack: %.1f allocations per record, want 0", got)
	}
}
