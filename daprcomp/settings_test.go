package daprcomp

import (
	"testing"
	"time"
)

// TestParseSettings: component metadata overrides the bridge's settings
// for its instance.
func TestParseSettings(t *testing.T) {
	s := &Server{cfg: Config{ReplyTopic: "payment.replies", RequestTopic: "req", BackendGroup: "edgebridge"}.withDefaults()}
	tests := []struct {
		name  string
		props map[string]string
		want  settings
	}{
		{name: "defaults", props: map[string]string{"consumerID": " payments "},
			want: settings{consumerID: "payments", replyTopic: "payment.replies", window: 128, maxAttempts: 5, retryBackoff: time.Second}},
		{name: "every override", props: map[string]string{"consumerID": "app", "replyTopic": "other.replies", "maxInFlight": "16",
			"maxAttempts": "2", "retryBackoff": "250ms", "initialOffset": "newest", "allowedTopics": "a"},
			want: settings{consumerID: "app", replyTopic: "other.replies", window: 16, maxAttempts: 2, retryBackoff: 250 * time.Millisecond, startNewest: true}},
		{name: "oldest", props: map[string]string{"initialOffset": "oldest"},
			want: settings{replyTopic: "payment.replies", window: 128, maxAttempts: 5, retryBackoff: time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.parseSettings(tc.props)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := s.parseSettings(map[string]string{"replyTopic": "req"}); err == nil {
		t.Error("reply topic equal to the request topic: got nil error")
	}
}
