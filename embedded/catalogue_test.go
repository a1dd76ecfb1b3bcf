package embedded

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// kfake writes topics.json only on an orderly Close; the embedded broker
// keeps it current before the first produce to a new topic is handled, so
// a kill -9 cannot lose the topic (test/integration kills the process).
func TestTopicCatalogueWrittenBeforeProduce(t *testing.T) {
	dir := t.TempDir()
	k, err := ListenKafka(KafkaConfig{Listen: "127.0.0.1:0", DataDir: dir, Partitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addr()), kgo.DefaultProduceTopic("fresh"), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "kafka", "topics.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f catalogueFile
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	for _, tp := range f.Topics {
		if tp.Name == "fresh" && tp.Partitions == 3 && tp.ID != "" {
			return
		}
	}
	t.Fatalf("topics.json does not hold the produced topic: %s", raw)
}
