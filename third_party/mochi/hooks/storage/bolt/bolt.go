// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co, werbenhu

// Package bolt is provided for historical compatibility and may not be actively updated, you should use the badger hook instead.
package bolt

import (
	"bytes"
	"errors"
	"slices"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"go.etcd.io/bbolt"
)

var (
	ErrBucketNotFound = errors.New("bucket not found")
	ErrKeyNotFound    = errors.New("key not found")
)

const (
	// defaultDbFile is the default file path for the boltdb file.
	defaultDbFile = ".bolt"

	// defaultTimeout is the default time to hold a connection to the file.
	defaultTimeout = 250 * time.Millisecond

	defaultBucket = "mochi"
)

// clientKey returns a primary key for a client.
func clientKey(cl *mqtt.Client) string {
	return storage.ClientKey + "_" + cl.ID
}

// subscriptionKey returns a primary key for a subscription.
func subscriptionKey(cl *mqtt.Client, filter string) string {
	return storage.SubscriptionKey + "_" + cl.ID + ":" + filter
}

// retainedKey returns a primary key for a retained message.
func retainedKey(topic string) string {
	return storage.RetainedKey + "_" + topic
}

// inflightKey returns a primary key for an inflight message.
func inflightKey(cl *mqtt.Client, pk packets.Packet) string {
	return storage.InflightKey + "_" + cl.ID + ":" + pk.FormatID()
}

// sysInfoKey returns a primary key for system info.
func sysInfoKey() string {
	return storage.SysInfoKey
}

// Options contains configuration settings for the bolt instance.
type Options struct {
	Options *bbolt.Options
	Bucket  string `yaml:"bucket" json:"bucket"`
	Path    string `yaml:"path" json:"path"`
}

// Hook is a persistent storage hook based using boltdb file store as a backend.
type Hook struct {
	mqtt.HookBase
	config *Options  // options for configuring the boltdb instance.
	db     *bbolt.DB // the boltdb instance.

	// edgebridge: writes are committed in groups (see commit).
	mu     sync.Mutex
	closed bool     // set by Stop: no more writes
	queue  []*write // writes not yet committed, in order; the first one's writer commits
	// edgebridge: deletes of settled inflight messages, not yet queued,
	// and the timer that queues them if no write comes first (see settle).
	settled  []*write
	flushing *time.Timer
}

// edgebridge: settledWithin is how long a settled inflight message's delete
// waits for a write to share a transaction with.
const settledWithin = 10 * time.Millisecond

// edgebridge: maxGroup is the most writes one transaction commits.
const maxGroup = 1024

// write is one put (val non-nil) or delete (val nil) of key, or a barrier,
// which writes nothing. ready is signalled when it is committed (err set)
// or when its writer is to commit the next group.
type write struct {
	key       []byte
	val       []byte
	barrier   bool
	settled   bool // a delete nobody waits for (see settle)
	ready     chan struct{}
	committed bool
	err       error
}

// ID returns the id of the hook.
func (h *Hook) ID() string {
	return "bolt-db"
}

// Provides indicates which hook methods this hook provides.
func (h *Hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
		mqtt.OnRetainMessage,
		mqtt.OnWillSent,
		mqtt.OnQosPublish,
		mqtt.OnQosComplete,
		mqtt.OnQosDropped,
		mqtt.OnSysInfoTick,
		mqtt.OnClientExpired,
		mqtt.OnRetainedExpired,
		mqtt.StoredClients,
		mqtt.StoredInflightMessages,
		mqtt.StoredRetainedMessages,
		mqtt.StoredSubscriptions,
		mqtt.StoredSysInfo,
	}, []byte{b})
}

// Init initializes and connects to the boltdb instance.
func (h *Hook) Init(config any) error {
	if _, ok := config.(*Options); !ok && config != nil {
		return mqtt.ErrInvalidConfigType
	}

	if config == nil {
		config = new(Options)
	}

	h.config = config.(*Options)
	if h.config.Options == nil {
		h.config.Options = &bbolt.Options{
			Timeout: defaultTimeout,
		}
	}
	if len(h.config.Path) == 0 {
		h.config.Path = defaultDbFile
	}

	if len(h.config.Bucket) == 0 {
		h.config.Bucket = defaultBucket
	}

	var err error
	h.db, err = bbolt.Open(h.config.Path, 0600, h.config.Options)
	if err != nil {
		return err
	}

	err = h.db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte(h.config.Bucket))
		return err
	})
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.closed = false
	h.mu.Unlock()
	return nil
}

// Stop closes the boltdb instance, after the writes already made are
// committed.
func (h *Hook) Stop() error {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	_ = h.enqueue(&write{barrier: true}) // returns once every write before it is committed
	err := h.db.Close()
	h.db = nil
	return err
}

// edgebridge: commit commits key's put (val non-nil) or delete, in a
// group with the writes made meanwhile, and returns once it is committed.
//
// Each bolt transaction, even with NoSync, writes its pages and its meta
// page with their own system calls: one per QoS 1 message sent (stored) and
// one per PUBACK (deleted) were a fifth of edgebridge's CPU at full load.
// The writer that finds no write queued commits its own at once, in its own
// goroutine: a lone write waits for nothing and pays no hand-off. Writes
// made while a transaction runs queue up; when it is committed, the first
// of them commits them all in the next one. Every writer still returns only
// once its write is committed, so the file is as current as before whenever
// a message goes out.
func (h *Hook) commit(key string, val []byte) error {
	return h.enqueue(&write{key: []byte(key), val: val})
}

// edgebridge: settle deletes the key of an inflight message its client
// has acknowledged, without waiting: the delete is queued ahead of the
// next write and committed in its transaction, or settledWithin later by
// a barrier of its own. At a device's pace the PUBACK comes a millisecond
// after the message was stored, so each message cost two transactions,
// and the second one held up the client's read loop. A crash in between
// leaves the message stored: it is sent again after the restart (QoS 1:
// at least once), as it would be had the PUBACK come a moment later.
func (h *Hook) settle(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return // the database is closing, or closed: as delKv, nothing to delete in
	}
	h.settled = append(h.settled, &write{key: []byte(key), settled: true})
	if h.flushing == nil {
		h.flushing = time.AfterFunc(settledWithin, func() { _ = h.enqueue(&write{barrier: true}) })
	}
}

// enqueue queues w and waits until it is committed, committing the group
// it leads if no write ahead of it waits. Once Stop began, only its
// barrier is queued: every write is either refused or ahead of it.
func (h *Hook) enqueue(w *write) error {
	w.ready = make(chan struct{}, 1)
	h.mu.Lock()
	if h.closed && !w.barrier {
		h.mu.Unlock()
		return storage.ErrDBFileNotOpen
	}
	if len(h.settled) > 0 { // they came first
		h.queue = append(h.queue, h.settled...)
		h.settled = nil
		if h.flushing != nil {
			h.flushing.Stop()
			h.flushing = nil
		}
	}
	h.queue = append(h.queue, w)
	lead := firstWaiting(h.queue) == w
	h.mu.Unlock()
	if !lead {
		<-w.ready
		if w.committed {
			return w.err
		}
	}
	// w leads: it commits the groups at the queue's head until its own is
	// committed (only settled deletes, which wait for nobody, can be ahead
	// of it, more than a group's worth after a burst of PUBACKs).
	for {
		h.mu.Lock()
		group := append([]*write(nil), h.queue[:min(len(h.queue), maxGroup)]...)
		h.mu.Unlock()
		h.commitGroup(group)
		h.mu.Lock()
		h.queue = h.queue[len(group):]
		mine := slices.Contains(group, w)
		var next *write
		if mine {
			next = firstWaiting(h.queue)
		}
		if len(h.queue) == 0 {
			h.queue = nil // let the backing array go
		}
		h.mu.Unlock()
		for _, g := range group {
			g.committed = true
			switch {
			case g.settled:
				if g.err != nil {
					h.Log.Error("failed to delete data", "error", g.err, "key", string(g.key))
				}
			case g != w:
				g.ready <- struct{}{}
			}
		}
		if mine {
			if next != nil {
				next.ready <- struct{}{} // it commits the next group
			}
			return w.err
		}
	}
}

// firstWaiting is the first write in queue whose writer waits for it: the
// one to commit the group at the queue's head. Settled deletes wait for
// nobody, and each is queued ahead of a write that does.
func firstWaiting(queue []*write) *write {
	for _, w := range queue {
		if !w.settled {
			return w
		}
	}
	return nil
}

// commitGroup commits group in one transaction and sets each write's err.
// If one write fails it (a key bolt refuses, say), each is committed alone,
// so it fails only its own.
func (h *Hook) commitGroup(group []*write) {
	writes := 0
	for _, w := range group {
		if !w.barrier {
			writes++
		}
	}
	if writes == 0 {
		return // barriers only
	}
	bucket := []byte(h.config.Bucket)
	err := h.db.Update(func(tx *bbolt.Tx) error { return apply(tx.Bucket(bucket), group) })
	if err != nil && writes > 1 {
		for _, w := range group {
			w.err = h.db.Update(func(tx *bbolt.Tx) error { return apply(tx.Bucket(bucket), []*write{w}) })
		}
		return
	}
	for _, w := range group {
		w.err = err
	}
}

// apply puts or deletes each write's key in b, in order.
func apply(b *bbolt.Bucket, group []*write) error {
	for _, w := range group {
		var err error
		switch {
		case w.barrier:
		case w.val != nil:
			err = b.Put(w.key, w.val)
		default:
			err = b.Delete(w.key)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// OnSessionEstablished adds a client to the store when their session is established.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	h.updateClient(cl)
}

// OnWillSent is called when a client sends a Will Message and the Will Message is removed from the client record.
func (h *Hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	h.updateClient(cl)
}

// updateClient writes the client data to the store.
func (h *Hook) updateClient(cl *mqtt.Client) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}

	props := cl.Properties.Props.Copy(false)
	in := &storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval: props.SessionExpiryInterval,
			AuthenticationMethod:  props.AuthenticationMethod,
			AuthenticationData:    props.AuthenticationData,
			RequestProblemInfo:    props.RequestProblemInfo,
			RequestResponseInfo:   props.RequestResponseInfo,
			ReceiveMaximum:        props.ReceiveMaximum,
			TopicAliasMaximum:     props.TopicAliasMaximum,
			User:                  props.User,
			MaximumPacketSize:     props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}

	_ = h.setKv(clientKey(cl), in)
}

// OnDisconnect removes a client from the store if they were using a clean session.
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}

	if !expire {
		return
	}

	if cl.StopCause() == packets.ErrSessionTakenOver {
		return
	}

	_ = h.delKv(clientKey(cl))
}

// OnSubscribed adds one or more client subscriptions to the store.
func (h *Hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}

	var in *storage.Subscription
	for i := 0; i < len(pk.Filters); i++ {
		in = &storage.Subscription{
			ID:                subscriptionKey(cl, pk.Filters[i].Filter),
			T:                 storage.SubscriptionKey,
			Client:            cl.ID,
			Qos:               reasonCodes[i],
			Filter:            pk.Filters[i].Filter,
			Identifier:        pk.Filters[i].Identifier,
			NoLocal:           pk.Filters[i].NoLocal,
			RetainHandling:    pk.Filters[i].RetainHandling,
			RetainAsPublished: pk.Filters[i].RetainAsPublished,
		}
		_ = h.setKv(in.ID, in)
	}
}

// OnUnsubscribed removes one or more client subscriptions from the store.
func (h *Hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}

	for i := 0; i < len(pk.Filters); i++ {
		_ = h.delKv(subscriptionKey(cl, pk.Filters[i].Filter))
	}
}

// OnRetainMessage adds a retained message for a topic to the store.
func (h *Hook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}

	if r == -1 {
		_ = h.delKv(retainedKey(pk.TopicName))
		return
	}

	props := pk.Properties.Copy(false)
	in := &storage.Message{
		ID:          retainedKey(pk.TopicName),
		T:           storage.RetainedKey,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Created:     pk.Created,
		Client:      cl.ID,
		Origin:      pk.Origin,
		Properties: storage.MessageProperties{
			PayloadFormat:          props.PayloadFormat,
			MessageExpiryInterval:  props.MessageExpiryInterval,
			ContentType:            props.ContentType,
			ResponseTopic:          props.ResponseTopic,
			CorrelationData:        props.CorrelationData,
			SubscriptionIdentifier: props.SubscriptionIdentifier,
			TopicAlias:             props.TopicAlias,
			User:                   props.User,
		},
	}

	_ = h.setKv(in.ID, in)
}

// OnQosPublish adds or updates an inflight message in the store.
func (h *Hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}

	props := pk.Properties.Copy(false)
	in := &storage.Message{
		ID:          inflightKey(cl, pk),
		T:           storage.InflightKey,
		Client:      cl.ID,
		Origin:      pk.Origin,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Sent:        sent,
		Created:     pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat:          props.PayloadFormat,
			MessageExpiryInterval:  props.MessageExpiryInterval,
			ContentType:            props.ContentType,
			ResponseTopic:          props.ResponseTopic,
			CorrelationData:        props.CorrelationData,
			SubscriptionIdentifier: props.SubscriptionIdentifier,
			TopicAlias:             props.TopicAlias,
			User:                   props.User,
		},
	}

	_ = h.setKv(in.ID, in)
}

// OnQosComplete removes a resolved inflight message from the store.
func (h *Hook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}

	h.settle(inflightKey(cl, pk)) // edgebridge: in the next write's transaction, see settle
}

// OnQosDropped removes a dropped inflight message from the store.
func (h *Hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
	}

	h.OnQosComplete(cl, pk)
}

// OnSysInfoTick stores the latest system info in the store.
func (h *Hook) OnSysInfoTick(sys *system.Info) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}

	in := &storage.SystemInfo{
		ID:   sysInfoKey(),
		T:    storage.SysInfoKey,
		Info: *sys,
	}

	_ = h.setKv(in.ID, in)
}

// OnRetainedExpired deletes expired retained messages from the store.
func (h *Hook) OnRetainedExpired(filter string) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}
	_ = h.delKv(retainedKey(filter))
}

// OnClientExpired deleted expired clients from the store.
func (h *Hook) OnClientExpired(cl *mqtt.Client) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return
	}
	_ = h.delKv(clientKey(cl))
}

// StoredClients returns all stored clients from the store.
func (h *Hook) StoredClients() (v []storage.Client, err error) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return v, storage.ErrDBFileNotOpen
	}

	err = h.iterKv(storage.ClientKey, func(value []byte) error {
		obj := storage.Client{}
		err = obj.UnmarshalBinary(value)
		if err == nil {
			v = append(v, obj)
		}
		return err
	})
	return v, nil
}

// StoredSubscriptions returns all stored subscriptions from the store.
func (h *Hook) StoredSubscriptions() (v []storage.Subscription, err error) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return v, storage.ErrDBFileNotOpen
	}

	v = make([]storage.Subscription, 0)
	err = h.iterKv(storage.SubscriptionKey, func(value []byte) error {
		obj := storage.Subscription{}
		err = obj.UnmarshalBinary(value)
		if err == nil {
			v = append(v, obj)
		}
		return err
	})
	return
}

// StoredRetainedMessages returns all stored retained messages from the store.
func (h *Hook) StoredRetainedMessages() (v []storage.Message, err error) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return v, storage.ErrDBFileNotOpen
	}

	v = make([]storage.Message, 0)
	err = h.iterKv(storage.RetainedKey, func(value []byte) error {
		obj := storage.Message{}
		err = obj.UnmarshalBinary(value)
		if err == nil {
			v = append(v, obj)
		}
		return err
	})
	return
}

// StoredInflightMessages returns all stored inflight messages from the store.
func (h *Hook) StoredInflightMessages() (v []storage.Message, err error) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return v, storage.ErrDBFileNotOpen
	}

	v = make([]storage.Message, 0)
	err = h.iterKv(storage.InflightKey, func(value []byte) error {
		obj := storage.Message{}
		err = obj.UnmarshalBinary(value)
		if err == nil {
			v = append(v, obj)
		}
		return err
	})
	return
}

// StoredSysInfo returns the system info from the store.
func (h *Hook) StoredSysInfo() (v storage.SystemInfo, err error) {
	if h.db == nil {
		h.Log.Error("", "error", storage.ErrDBFileNotOpen)
		return v, storage.ErrDBFileNotOpen
	}

	err = h.getKv(storage.SysInfoKey, &v)
	if err != nil && !errors.Is(err, ErrKeyNotFound) {
		return
	}

	return v, nil
}

// setKv stores a key-value pair in the database.
func (h *Hook) setKv(k string, v storage.Serializable) error {
	data, err := v.MarshalBinary()
	if err == nil {
		if data == nil {
			data = []byte{} // a put, not a delete
		}
		err = h.commit(k, data) // edgebridge: in a group, see commit
	}
	if err != nil {
		h.Log.Error("failed to upsert data", "error", err, "key", k)
	}
	return err
}

// delKv deletes a key-value pair from the database.
func (h *Hook) delKv(k string) error {
	err := h.commit(k, nil) // edgebridge: in a group, see commit
	if err != nil {
		h.Log.Error("failed to delete data", "error", err, "key", k)
	}
	return err
}

// getKv retrieves the value associated with a key from the database.
func (h *Hook) getKv(k string, v storage.Serializable) error {
	err := h.db.View(func(tx *bbolt.Tx) error {
		bucket := tx.Bucket([]byte(h.config.Bucket))

		value := bucket.Get([]byte(k))
		if value == nil {
			return ErrKeyNotFound
		}

		return v.UnmarshalBinary(value)
	})
	if err != nil {
		h.Log.Error("failed to get data", "error", err, "key", k)
	}
	return err
}

// iterKv iterates over key-value pairs with keys having the specified prefix in the database.
func (h *Hook) iterKv(prefix string, visit func([]byte) error) error {
	err := h.db.View(func(tx *bbolt.Tx) error {
		bucket := tx.Bucket([]byte(h.config.Bucket))

		c := bucket.Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && string(k[:len(prefix)]) == prefix; k, v = c.Next() {
			if err := visit(v); err != nil {
				return err
			}
		}
		return nil
	})

	if err != nil {
		h.Log.Error("failed to iter data", "error", err, "prefix", prefix)
	}
	return err
}
