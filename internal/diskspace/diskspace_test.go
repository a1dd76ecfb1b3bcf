package diskspace

import "testing"

func TestFloorHysteresis(t *testing.T) {
	f := Floor{Min: 100 << 20}
	steps := []struct {
		free         uint64
		low, changed bool
	}{
		{200 << 20, false, false},
		{100 << 20, false, false}, // at the floor is not below it
		{99 << 20, true, true},
		{120 << 20, true, false}, // above the floor, below the margin
		{149 << 20, true, false},
		{150 << 20, false, true}, // floor + half the floor
		{99 << 20, true, true},
	}
	for i, s := range steps {
		low, changed := f.Note(s.free)
		if low != s.low || changed != s.changed {
			t.Fatalf("step %d (%d MiB free): low=%v changed=%v, want %v %v", i, s.free>>20, low, changed, s.low, s.changed)
		}
	}
	if small := (&Floor{Min: 1 << 20}).ResumeAbove(); small != 2<<20 {
		t.Fatalf("a 1 MiB floor resumes above %d, want 2 MiB (a 1 MiB margin at least)", small)
	}
}

func TestFree(t *testing.T) {
	if n, err := Free(t.TempDir()); err != nil || n == 0 {
		t.Fatalf("Free = %d, %v; want some space", n, err)
	}
	if _, err := Free("/nonexistent/edgebridge"); err == nil {
		t.Fatal("Free of a missing dir: want an error")
	}
}

func TestMiB(t *testing.T) {
	if got := MiB(uint64(512 << 10)); got != "0.5 MiB" {
		t.Errorf("MiB(512 KiB) = %q", got)
	}
	if got := MiB(int64(256 << 20)); got != "256.0 MiB" {
		t.Errorf("MiB(256 MiB) = %q", got)
	}
}

// The embedded broker reads the free space on every produce request.
func BenchmarkFree(b *testing.B) {
	dir := b.TempDir()
	for b.Loop() {
		if _, err := Free(dir); err != nil {
			b.Fatal(err)
		}
	}
}
