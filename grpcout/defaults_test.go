package grpcout_test

import (
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/grpcout"
)

// A pool built without the product's config (the bench, a tool) gets the
// product's defaults, and derives the heartbeat's bounds from an interval
// as config does.
func TestDefaultsAreTheProducts(t *testing.T) {
	for _, interval := range []time.Duration{0, 2 * time.Second, 700 * time.Millisecond} {
		c, err := config.Parse([]byte("backend:\n  heartbeat: {interval: " + interval.String() + "}\n"))
		if err != nil {
			t.Fatal(err)
		}
		b := c.Backend
		d := grpcout.WithDefaults(grpcout.Config{Heartbeat: grpcout.Heartbeat{Interval: interval}})
		got := []any{d.Window, d.OpenTimeout, d.AckTimeout, d.ResolveInterval, d.HealthCheckAfter,
			d.Backoff.Initial, d.Backoff.Max, d.Backoff.Jitter, d.Backoff.ResetAfter,
			d.Heartbeat.Interval, d.Heartbeat.MinInterval, d.Heartbeat.MaxInterval, d.Heartbeat.Timeout, d.Heartbeat.SlowRTT,
			d.Keepalive.Time, d.Keepalive.Timeout}
		want := []any{b.Window, b.OpenTimeout, b.AckTimeout, b.ResolveInterval, b.Reconnect.HealthCheckAfter,
			b.Reconnect.Initial, b.Reconnect.Max, b.Reconnect.Jitter, b.Reconnect.ResetAfter,
			b.Heartbeat.Interval, b.Heartbeat.MinInterval, b.Heartbeat.MaxInterval, b.Heartbeat.Timeout, b.Heartbeat.SlowRTT,
			b.Keepalive.Time, b.Keepalive.Timeout}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("interval %s: grpcout default #%d is %v, config's %v", interval, i, got[i], want[i])
			}
		}
	}
}
