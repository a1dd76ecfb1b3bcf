package ackwindow

import (
	"context"
	"testing"
	"time"
)

// BenchmarkAckOutOfOrder: a full window of 128 ACKed newest first, so the
// floor moves once per window.
func BenchmarkAckOutOfOrder(b *testing.B) {
	const n = 128
	w := New(n)
	w.Assign(0, 0)
	ctx := context.Background()
	b.ReportAllocs()
	var base int64
	for b.Loop() {
		for i := range int64(n) {
			if err := w.Add(ctx, 0, base+i, time.Time{}); err != nil {
				b.Fatal(err)
			}
		}
		for i := int64(n - 1); i >= 0; i-- {
			w.Ack(0, base+i)
		}
		base += n
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
}
