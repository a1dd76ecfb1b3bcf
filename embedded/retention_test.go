package embedded

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgebridge/edgebridge/kafkapipe"
)

// TestDeadLetterTopicBounded: the topic configs the bridge's producer gives
// the topics it creates reach the broker, which applies them: records on
// the dead-letter topic older than its retention.ms are deleted, while the
// request topic (retention -1) keeps records of any age until a group
// commits past them (trim.go).
func TestDeadLetterTopicBounded(t *testing.T) {
	r := newKafkaRig(t, t.TempDir(), "127.0.0.1:0", KafkaConfig{Partitions: 1})
	p, err := kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{r.k.Addr()},
		TopicConfigs: map[string]map[string]string{
			"requests": {"retention.ms": "-1", "retention.bytes": "-1"},
			"dlq":      {"retention.ms": "3600000", "retention.bytes": "1048576"},
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.EnsureTopics(r.ctx, 1, "requests", "dlq"); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	for _, topic := range []string{"requests", "dlq"} {
		recs := make([]*kgo.Record, 5)
		for i := range recs {
			recs[i] = &kgo.Record{Topic: topic, Partition: 0, Value: []byte("x"), Timestamp: old}
		}
		if err := r.cl.ProduceSync(r.ctx, recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	r.k.c.ApplyRetention() // what the broker does every retentionInterval
	if got := r.logStart("dlq", 0); got != 5 {
		t.Errorf("dead-letter topic log start after retention: got %d, want 5 (two-hour-old records, retention 1h)", got)
	}
	if got := r.logStart("requests", 0); got != 0 {
		t.Errorf("request topic log start after retention: got %d, want 0 (retention -1)", got)
	}
}
