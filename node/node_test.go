package node

import (
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/config"
)

// The in-process broker gets the storage settings: committed records
// deleted after kafka.delete_committed_after (a negative value: never),
// and its own floor at half the bridge's, a backstop below the pause.
func TestEmbeddedKafkaStorageSettings(t *testing.T) {
	for _, tc := range []struct {
		yaml        string
		deleteAfter time.Duration
		minFree     int64
	}{
		{"kafka:\n  brokers: [embedded]\n", time.Minute, 128 << 20},
		{"kafka:\n  brokers: [embedded]\n  delete_committed_after: -1s\n  min_free_bytes: -1\n", 0, 0},
		{"kafka:\n  brokers: [embedded]\n  delete_committed_after: 5s\n  min_free_bytes: 1048576\n", 5 * time.Second, 512 << 10},
	} {
		cfg, err := config.Parse([]byte(tc.yaml))
		if err != nil {
			t.Fatal(err)
		}
		kc, err := embeddedKafka(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if kc.DeleteCommittedAfter != tc.deleteAfter || kc.MinFreeBytes != tc.minFree {
			t.Errorf("%q: delete after %s, broker floor %d; want %s, %d", tc.yaml, kc.DeleteCommittedAfter, kc.MinFreeBytes, tc.deleteAfter, tc.minFree)
		}
	}
}
