package daprcomp

import (
	"testing"

	"github.com/edgebridge/edgebridge/config"
)

// A Server built without the product's config gets the product's
// defaults (its session timeout was once 10s against config's 6s).
func TestDefaultsAreTheProducts(t *testing.T) {
	c, d := config.Default(), Config{}.withDefaults()
	got := []any{d.Window, d.MaxAttempts, d.RetryBackoff, d.CommitInterval, d.DrainTimeout, d.SessionTimeout, d.Partitions, d.MaxMessageBytes}
	want := []any{c.Dapr.Window, c.Dapr.MaxAttempts, c.Dapr.RetryBackoff, c.Kafka.CommitInterval, c.Shutdown.DrainTimeout,
		c.Kafka.SessionTimeout, c.Kafka.Partitions, c.Kafka.MaxMessageBytes}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("daprcomp default #%d is %v, config's %v", i, got[i], want[i])
		}
	}
}
