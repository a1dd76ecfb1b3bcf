package backend

import (
	"container/list"
	"sync"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

// MemoryStore is a bounded in-memory Store: it remembers the last N results
// (an LRU). It forgets on restart; use a durable Store where a restart must
// not process a message twice. It is safe for concurrent use.
type MemoryStore struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recent
	items map[string]*list.Element
}

type memItem struct {
	id string
	st Stored
}

// NewMemoryStore returns a store holding at most n results (n < 1 means 1024).
func NewMemoryStore(n int) *MemoryStore {
	if n < 1 {
		n = 1024
	}
	return &MemoryStore{max: n, order: list.New(), items: make(map[string]*list.Element)}
}

// Lookup implements Store.
func (m *MemoryStore) Lookup(id string) (Stored, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.items[id]
	if !ok {
		return Stored{}, false
	}
	m.order.MoveToFront(e)
	return e.Value.(*memItem).st, true
}

// Save implements Store.
func (m *MemoryStore) Save(env *v1.Envelope, r Result) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := env.GetMessageId()
	st := Stored{Result: r, Fingerprint: env.GetFingerprint()}
	if e, ok := m.items[id]; ok {
		e.Value.(*memItem).st = st
		m.order.MoveToFront(e)
		return nil
	}
	m.items[id] = m.order.PushFront(&memItem{id: id, st: st})
	if m.order.Len() > m.max {
		last := m.order.Back()
		m.order.Remove(last)
		delete(m.items, last.Value.(*memItem).id)
	}
	return nil
}

// Len returns the number of remembered results.
func (m *MemoryStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items)
}
