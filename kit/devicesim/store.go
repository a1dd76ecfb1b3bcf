package devicesim

import (
	"bytes"
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// orderedStore is paho's memory store with three changes a device that
// must keep its requests in order needs:
//   - All lists stored messages in the order they were sent. paho resends
//     a session's in-flight messages on reconnect in the order the store
//     lists them, and its MemoryStore lists them in Go map order: a device
//     with several requests outstanding during a broker restart would
//     otherwise reorder its own requests.
//   - Put keeps a copy and Get returns a fresh one: paho's resume sets the
//     DUP flag on the packet Get returns while the packet it was first
//     queued as may still be written by the connection's writer (a data
//     race inside paho with its own store).
//   - WaitSent blocks while published messages await their PUBACK, so a
//     device whose publish failed with the connection does not send the
//     next request before paho resent the failed one.
//   - onAck, if set, is given each publish the broker acknowledged: paho
//     deletes an outbound packet from its store only on its PUBACK, so
//     this sees every PUBACK, also of a publish whose token failed with a
//     lost connection and that paho resent after reconnecting.
type orderedStore struct {
	*paho.MemoryStore
	mu    sync.Mutex
	out   int           // outbound packets stored: sent, not yet acknowledged
	sent  chan struct{} // closed while out == 0
	onAck func(*packets.PublishPacket)
}

func newOrderedStore() *orderedStore {
	s := &orderedStore{MemoryStore: paho.NewMemoryStore(), sent: make(chan struct{})}
	close(s.sent)
	return s
}

// Put stores m under key, a copy of it for an outbound packet.
func (s *orderedStore) Put(key string, m packets.ControlPacket) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !outbound(key) {
		s.MemoryStore.Put(key, m)
		return
	}
	if s.MemoryStore.Get(key) == nil {
		if s.out == 0 {
			s.sent = make(chan struct{})
		}
		s.out++
	}
	s.MemoryStore.Put(key, clonePacket(m))
}

// Get returns the packet stored under key (nil if none), a fresh copy for
// an outbound packet.
func (s *orderedStore) Get(key string) packets.ControlPacket {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.MemoryStore.Get(key)
	if m != nil && outbound(key) {
		return clonePacket(m)
	}
	return m
}

func outbound(key string) bool { return strings.HasPrefix(key, "o.") }

// Del removes key.
func (s *orderedStore) Del(key string) {
	s.mu.Lock()
	var acked *packets.PublishPacket
	if outbound(key) {
		if m := s.MemoryStore.Get(key); m != nil {
			acked, _ = m.(*packets.PublishPacket)
			s.out--
			if s.out == 0 {
				close(s.sent)
			}
		}
	}
	s.MemoryStore.Del(key)
	s.mu.Unlock()
	if acked != nil && s.onAck != nil {
		s.onAck(acked)
	}
}

// Reset empties the store.
func (s *orderedStore) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out > 0 {
		s.out = 0
		close(s.sent)
	}
	s.MemoryStore.Reset()
}

// WaitSent blocks until no published message awaits its PUBACK, or ctx
// ends (false).
func (s *orderedStore) WaitSent(ctx context.Context) bool {
	s.mu.Lock()
	ch := s.sent
	s.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// clonePacket copies m through its wire form (m is read and its length
// fields rewritten, so m must not be in use by another goroutine: Put is
// called before paho queues a packet, and stored packets are only read
// here under the store's lock).
func clonePacket(m packets.ControlPacket) packets.ControlPacket {
	var buf bytes.Buffer
	if m.Write(&buf) != nil {
		return m
	}
	c, err := packets.ReadPacket(&buf)
	if err != nil {
		return m
	}
	return c
}

// All returns the keys ("o.<id>" sent, "i.<id>" received) ordered by
// packet id per direction; ids wrap at 65535, so when the ids in flight
// straddle the wrap the small ones come last.
func (s *orderedStore) All() []string {
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
