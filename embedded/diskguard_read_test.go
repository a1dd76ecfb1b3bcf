package embedded

import (
	"log/slog"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/internal/diskspace"
)

// The produce check reads the free space once per diskReadEvery while the
// broker's own writes keep clear of the floor's resume margin, and for
// every produce once they come near it or space is low: a trickle of
// produces does not pay a statfs each, and a burst cannot write past the
// floor unseen.
func TestDiskGuardReadsWhenItMatters(t *testing.T) {
	const floor, kb = 8 << 20, 1 << 10
	clock := time.Unix(1_700_000_000, 0)
	free := uint64(64 << 20)
	reads := 0
	g := &diskGuard{log: slog.New(slog.DiscardHandler), floor: diskspace.Floor{Min: floor},
		now: func() time.Time { return clock },
		statfs: func(string) (uint64, error) {
			reads++
			return free, nil
		}}
	produce := func() (refused bool) {
		if low, _ := g.low(kb); low {
			return true
		}
		free -= min(free, kb) // the broker writes it
		return false
	}
	readsFor := func(produces int) (n int, refused bool) {
		before := reads
		for range produces {
			refused = produce() || refused
		}
		return reads - before, refused
	}

	if n, refused := readsFor(1000); n != 1 || refused {
		t.Fatalf("1,000 produces with room, within %s: %d reads (want 1), refused %v", diskReadEvery, n, refused)
	}
	clock = clock.Add(diskReadEvery)
	if n, _ := readsFor(1); n != 1 {
		t.Fatalf("after %s: %d reads, want 1", diskReadEvery, n)
	}

	// Another process fills the disk: seen at the next reading.
	free = floor - 1
	if n, refused := readsFor(1); n != 0 || refused {
		t.Fatalf("before the next reading is due: %d reads, refused %v; want the last reading used", n, refused)
	}
	clock = clock.Add(diskReadEvery)
	if n, refused := readsFor(5); n != 5 || !refused {
		t.Fatalf("below the floor: %d reads for 5 produces (want 5: each while low), refused %v", n, refused)
	}

	// Space back, then the broker's own writes approach the floor: once the
	// last reading less what was written since is within the resume
	// margin, every produce reads, and the first refusal comes one produce
	// past the floor at most.
	free = g.floor.ResumeAbove() + 10*kb
	clock = clock.Add(diskReadEvery)
	n, refused := readsFor(10)
	if n != 1 || refused {
		t.Fatalf("space back: %d reads for 10 produces (want 1), refused %v", n, refused)
	}
	produces, before := 0, reads
	for !produce() {
		if produces++; produces > 1<<20/kb*16 {
			t.Fatal("never refused")
		}
	}
	if n := reads - before; n != produces+1 || free+kb < floor {
		t.Fatalf("refused at %d bytes free (floor %d) after %d produces and %d reads; want a read for each and the refused one, and at most one produce past the floor", free, floor, produces, n)
	}
}
