package grpcout

import (
	"math/rand/v2"
	"time"
)

// next is the delay after d: doubled, capped at Max.
func (b Backoff) next(d time.Duration) time.Duration { return min(2*d, b.Max) }

// jittered spreads d by ±Jitter so many bridges do not reconnect in step.
func (b Backoff) jittered(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	f := 1 + b.Jitter*(2*rand.Float64()-1)
	return time.Duration(float64(d) * f)
}
