package kafkapipe_test

import (
	"testing"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/kafkapipe"
)

// A consumer built without the product's config (a tool, a test) gets the
// product's defaults: the session timeout was once 6s in config and 10s
// here.
func TestConsumerDefaultsAreTheProducts(t *testing.T) {
	c, d := config.Default(), kafkapipe.ConsumerDefaults()
	if d.SessionTimeout != c.Kafka.SessionTimeout || d.HeartbeatInterval != c.Kafka.HeartbeatInterval ||
		d.CommitInterval != c.Kafka.CommitInterval || d.DrainTimeout != c.Shutdown.DrainTimeout {
		t.Fatalf("consumer defaults: session %s, heartbeat %s, commit %s, drain %s; config: %s, %s, %s, %s",
			d.SessionTimeout, d.HeartbeatInterval, d.CommitInterval, d.DrainTimeout,
			c.Kafka.SessionTimeout, c.Kafka.HeartbeatInterval, c.Kafka.CommitInterval, c.Shutdown.DrainTimeout)
	}
}
