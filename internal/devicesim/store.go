package devicesim

import (
	"slices"
	"strconv"
	"strings"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// orderedStore is paho's memory store, but it lists stored messages in the
// order they were sent. paho resends a session's in-flight messages on
// reconnect in the order the store lists them, and its MemoryStore lists
// them in Go map order: a device with several requests outstanding during
// a broker restart would otherwise reorder its own requests (seen as a
// per-device order violation in the Mosquitto-restart chaos scenario).
type orderedStore struct{ *paho.MemoryStore }

func newOrderedStore() orderedStore { return orderedStore{paho.NewMemoryStore()} }

// All returns the keys ("o.<id>" sent, "i.<id>" received) ordered by
// packet id per direction; ids wrap at 65535, so when the ids in flight
// straddle the wrap the small ones come last.
func (s orderedStore) All() []string {
	keys := s.MemoryStore.All()
	wraps := map[string]bool{}
	byDir := map[string][2]int{} // min, max id per direction
	for _, k := range keys {
		dir, id := splitKey(k)
		mm, ok := byDir[dir]
		if !ok {
			mm = [2]int{id, id}
		}
		byDir[dir] = [2]int{min(mm[0], id), max(mm[1], id)}
	}
	for dir, mm := range byDir {
		wraps[dir] = mm[1]-mm[0] > 1<<15
	}
	rank := func(k string) (string, int) {
		dir, id := splitKey(k)
		if wraps[dir] && id < 1<<15 {
			id += 1 << 16
		}
		return dir, id
	}
	slices.SortFunc(keys, func(a, b string) int {
		da, ia := rank(a)
		db, ib := rank(b)
		if c := strings.Compare(da, db); c != 0 {
			return c
		}
		return ia - ib
	})
	return keys
}

func splitKey(k string) (dir string, id int) {
	dir, num, _ := strings.Cut(k, ".")
	id, _ = strconv.Atoi(num)
	return dir, id
}
