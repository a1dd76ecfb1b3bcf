// Package disktest gives tests a small filesystem of their own, to fill up.
package disktest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/edgebridge/edgebridge/internal/diskspace"
)

// Mount mounts a tmpfs of size (mount's syntax: "32m") for the test and
// unmounts it at cleanup. It needs root, which the test machines have.
func Mount(t testing.TB, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a %s tmpfs (the test needs root): %v %s", size, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Free is the free space on dir's filesystem.
func Free(t testing.TB, dir string) int64 {
	t.Helper()
	n, err := diskspace.Free(dir)
	if err != nil {
		t.Fatal(err)
	}
	return int64(n)
}

// Fill writes a ballast file in dir leaving about leave bytes free, and
// returns its path (remove it to free the space).
func Fill(t testing.TB, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, "ballast")
	if err := os.WriteFile(path, make([]byte, max(Free(t, dir)-leave, 0)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
