package syncbuf

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Writers and a reader at once (run with -race): every write lands whole.
func TestConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 100 {
				fmt.Fprintf(&b, "w%d-%d\n", i, j)
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if n := strings.Count(b.String(), "\n"); n != 400 {
		t.Fatalf("got %d lines, want 400", n)
	}
}

// With Max it keeps the last Max bytes, and its memory stays bounded.
func TestMaxKeepsTheTail(t *testing.T) {
	b := Buffer{Max: 10}
	for i := range 1000 {
		fmt.Fprintf(&b, "%04d|", i)
	}
	if got := b.String(); got != "0998|0999|" {
		t.Fatalf("got %q, want the last 10 bytes", got)
	}
	if c := b.b.Cap(); c > 256 {
		t.Fatalf("capacity %d after 5,000 bytes written with Max 10", c)
	}
}
