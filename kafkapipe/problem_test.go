package kafkapipe_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/edgebridge/edgebridge/kafkapipe"
)

// A failed Kafka write says why, in words an operator can act on.
func TestProblemClassifiesWriteFailures(t *testing.T) {
	tests := []struct {
		err    error
		reason string
	}{
		// As the producer reports a record's failure.
		{fmt.Errorf("512 of 512 records: edgebridge.payment.requests[0]: %w", kafka.KafkaStorageError), "no_space"},
		{fmt.Errorf("write: %w", kafka.MessageSizeTooLarge), "too_large"},
		{kafka.TopicAuthorizationFailed, "auth"},
		{kafka.SASLAuthenticationFailed, "auth"},
		{kafka.Unknown, "refused"},
		{errors.New("dial tcp 127.0.0.1:9092: connect: connection refused"), "unreachable"},
	}
	for _, tc := range tests {
		reason, why := kafkapipe.Problem(tc.err)
		if reason != tc.reason || why == "" {
			t.Errorf("%v: reason %q (%s), want %q", tc.err, reason, why, tc.reason)
		}
	}
}
