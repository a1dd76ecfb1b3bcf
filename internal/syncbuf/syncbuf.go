// Package syncbuf is a bytes buffer one goroutine (a child process's
// output, a logger) writes while another reads it: tests' log sinks.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer is safe for concurrent use. The zero value is empty, unbounded
// and ready.
type Buffer struct {
	// Max, if above zero, is how many bytes it keeps: the last ones written.
	Max int

	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	if over := s.b.Len() - s.Max; s.Max > 0 && over > 0 {
		s.b.Next(over)
	}
	return n, err
}

// String returns what was written so far (the last Max bytes of it).
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
