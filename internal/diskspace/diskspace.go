// Package diskspace reads a filesystem's free space and keeps a floor with
// hysteresis: the bridge's high-water mark (intake pauses) and the embedded
// Kafka broker's (produces are refused) share it.
package diskspace

import (
	"fmt"
	"syscall"
)

// Free is the space available to an unprivileged writer on the filesystem
// holding dir.
func Free(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// Floor is a free-space floor: Low turns true when free space drops below
// Min and false again only once it is back above Min plus a margin (half
// the floor, at least 1 MiB), so it does not flap around the floor.
type Floor struct {
	Min uint64
	low bool
}

// ResumeAbove is the free space at which a low floor clears.
func (f *Floor) ResumeAbove() uint64 { return f.Min + max(f.Min/2, 1<<20) }

// Note records a reading and reports whether space is low, and whether
// that changed with this reading. Not safe for concurrent use.
func (f *Floor) Note(free uint64) (low, changed bool) {
	was := f.low
	switch {
	case !f.low && free < f.Min:
		f.low = true
	case f.low && free >= f.ResumeAbove():
		f.low = false
	}
	return f.low, f.low != was
}

// MiB formats n bytes for logs and messages: "0.4 MiB", "256.0 MiB".
func MiB[T ~uint64 | ~int64](n T) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
