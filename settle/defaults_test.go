package settle_test

import (
	"testing"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/settle"
)

// A Policy without values retries as the product's config does.
func TestDefaultsAreTheProducts(t *testing.T) {
	c, p := config.Default(), settle.PolicyDefaults()
	if p.MaxAttempts != c.Backend.MaxAttempts || p.Backoff != c.Backend.RetryBackoff ||
		p.MaxAttempts != c.Dapr.MaxAttempts || p.Backoff != c.Dapr.RetryBackoff {
		t.Fatalf("policy defaults %d, %s; config backend %d, %s, dapr %d, %s", p.MaxAttempts, p.Backoff,
			c.Backend.MaxAttempts, c.Backend.RetryBackoff, c.Dapr.MaxAttempts, c.Dapr.RetryBackoff)
	}
}
