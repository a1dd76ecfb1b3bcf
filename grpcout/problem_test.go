package grpcout

import (
	"testing"
	"time"
)

// A protocol error is logged at most once per problem every
// problemLogEvery; the next log says how many were not.
func TestProblemLogRateLimit(t *testing.T) {
	var l problemLog
	t0 := time.Unix(1000, 0)
	steps := []struct {
		problem Problem
		at      time.Duration
		due     bool
		skipped int
	}{
		{ProblemUnknownSeq, 0, true, 0},
		{ProblemUnknownSeq, time.Second, false, 0},
		{ProblemMessageMismatch, time.Second, true, 0}, // each problem has its own clock
		{ProblemUnknownSeq, 5 * time.Second, false, 0},
		{ProblemUnknownSeq, problemLogEvery, true, 2},
		{ProblemUnknownSeq, problemLogEvery + time.Millisecond, false, 0},
	}
	for i, s := range steps {
		n, due := l.due(s.problem, t0.Add(s.at))
		if due != s.due || n != s.skipped {
			t.Errorf("step %d (%s at %s): got due %v, skipped %d; want %v, %d", i, s.problem, s.at, due, n, s.due, s.skipped)
		}
	}
}
