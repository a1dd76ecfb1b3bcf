package embedded

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// catalogue keeps kfake's topics.json current on disk.
//
// kfake writes its topic catalogue (topics.json) only at an orderly Close
// (and at the first start). Record segments and group offsets are fsynced
// as they are written, but after a kill -9 kfake loads only the topics in
// topics.json: every topic created since the last orderly stop, with all
// its acknowledged records, would be gone. So before kfake handles a
// produce to a topic the catalogue does not hold yet, the catalogue is
// rewritten (atomically, fsynced) with that topic. The file format is
// kfake's own (see kfake persist.go, persistTopics); a kill -9 test in
// test/integration catches drift when kfake is upgraded.
type catalogue struct {
	c    *kfake.Cluster
	path string

	mu     sync.Mutex
	topics map[string]catalogueTopic // by name
	ids    map[[16]byte]bool
}

type topicRef struct {
	name string
	id   [16]byte
}

// catalogueTopic mirrors kfake's persistTopic.
type catalogueTopic struct {
	Name       string            `json:"name"`
	ID         string            `json:"id"` // base64, like kfake's uuid
	Partitions int               `json:"partitions"`
	Replicas   int               `json:"replicas"`
	Configs    map[string]string `json:"configs,omitempty"`
}

type catalogueFile struct {
	Version int              `json:"version"`
	Topics  []catalogueTopic `json:"topics"`
}

// watchCatalogue loads dir/topics.json (if any) and installs the produce hook.
func watchCatalogue(c *kfake.Cluster, dir string) (*catalogue, error) {
	cat := &catalogue{c: c, path: filepath.Join(dir, "topics.json"), topics: map[string]catalogueTopic{}, ids: map[[16]byte]bool{}}
	raw, err := os.ReadFile(cat.path)
	switch {
	case os.IsNotExist(err):
	case err != nil:
		return nil, fmt.Errorf("embedded: read topic catalogue: %w", err)
	default:
		var f catalogueFile
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, fmt.Errorf("embedded: parse topic catalogue: %w", err)
		}
		for _, t := range f.Topics {
			cat.topics[t.Name] = t
			if id, err := base64.StdEncoding.DecodeString(t.ID); err == nil && len(id) == 16 {
				cat.ids[[16]byte(id)] = true
			}
		}
	}
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		// Produce v13+ names topics by ID, older versions by name.
		var missing []topicRef
		cat.mu.Lock()
		for _, t := range req.(*kmsg.ProduceRequest).Topics {
			_, byName := cat.topics[t.Topic]
			_, byID := cat.ids[t.TopicID]
			if !byName && !byID {
				missing = append(missing, topicRef{t.Topic, t.TopicID})
			}
		}
		cat.mu.Unlock()
		if len(missing) > 0 {
			// TopicInfo goes through kfake's loop: let it run meanwhile.
			c.SleepControl(func() { cat.add(missing) })
		}
		return nil, nil, false // kfake handles the produce as usual
	})
	return cat, nil
}

// add writes the catalogue with topics added; unknown topics are skipped
// (kfake rejects produces to them anyway). If the write fails, the topics
// stay missing and the next produce to them tries again.
func (cat *catalogue) add(topics []topicRef) {
	added := map[string]catalogueTopic{}
	for _, ref := range topics {
		info := cat.c.TopicInfo(ref.name)
		if ref.name == "" {
			info = cat.c.TopicIDInfo(ref.id)
		}
		if info == nil {
			continue
		}
		name := info.Topic
		t := catalogueTopic{Name: name, ID: base64.StdEncoding.EncodeToString(info.TopicID[:]),
			Partitions: len(cat.c.PartitionInfos(name)), Replicas: info.NumReplicas}
		for k, v := range info.Configs {
			if v != nil {
				if t.Configs == nil {
					t.Configs = map[string]string{}
				}
				t.Configs[k] = *v
			}
		}
		added[name] = t
	}
	if len(added) == 0 {
		return
	}
	cat.mu.Lock()
	defer cat.mu.Unlock()
	next := make(map[string]catalogueTopic, len(cat.topics)+len(added))
	for k, v := range cat.topics {
		next[k] = v
	}
	for k, v := range added {
		next[k] = v
	}
	f := catalogueFile{Version: 1}
	for _, t := range next {
		f.Topics = append(f.Topics, t)
	}
	if err := writeFileSync(cat.path, f); err != nil {
		return
	}
	cat.topics = next
	for _, t := range added {
		if id, err := base64.StdEncoding.DecodeString(t.ID); err == nil && len(id) == 16 {
			cat.ids[[16]byte(id)] = true
		}
	}
}

// writeFileSync writes v as JSON to path atomically (replaceFile).
func writeFileSync(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return replaceFile(path, data)
}
