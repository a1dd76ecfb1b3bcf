package mqtt

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mochi-mqtt/server/v2/packets"
)

// ackOrderHook records, when the publisher's PUBACK is written, how many
// messages the subscriber holds in flight.
type ackOrderHook struct {
	HookBase
	sub      *Client
	atPuback int
}

func (h *ackOrderHook) ID() string { return "ack-order" }

func (h *ackOrderHook) Provides(b byte) bool { return b == OnPacketEncode }

func (h *ackOrderHook) OnPacketEncode(cl *Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Puback {
		h.atPuback = h.sub.State.Inflight.Len()
	}
	return pk
}

// edgebridge: a QoS 1 publish is routed, and so held in every subscriber's
// session, before its PUBACK is written.
func TestEdgebridgeRoutedBeforePuback(t *testing.T) {
	s := newServer()
	sub, _, _ := newTestClient()
	sub.ID = "sub"
	sub.Net.Conn = nil // offline: the message waits in its session
	s.Clients.Add(sub)
	s.Topics.Subscribe(sub.ID, packets.Subscription{Filter: "a/b/c", Qos: 1})
	h := &ackOrderHook{sub: sub}
	cl, r, w := newTestClient()
	require.NoError(t, cl.ops.hooks.Add(h, nil)) // the publisher's writes
	go func() {
		err := s.processPacket(cl, *packets.TPacketData[packets.Publish].Get(packets.TPublishQos1).Packet)
		require.NoError(t, err)
		_ = w.Close()
	}()
	buf, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, packets.TPacketData[packets.Puback].Get(packets.TPuback).RawBytes, buf)
	require.Equal(t, 1, h.atPuback, "the subscriber did not hold the message when the PUBACK was written")
}

// edgebridge change 5: GetByListener (what Server.Close runs for each
// listener) took the read lock twice (through Len). With a writer queued
// between the two (a client attaching or leaving: Delete), both waited on
// each other for ever, and the broker's Close hung. Readers and writers
// here race for a bounded number of rounds; with the recursive read lock
// this hangs within a few thousand rounds on this machine.
func TestEdgebridgeGetByListenerWithWriters(t *testing.T) {
	cl := NewClients()
	for i := 0; i < 8; i++ {
		cl.Add(&Client{ID: fmt.Sprintf("c%d", i), Net: ClientConnection{Listener: "tcp"}})
	}
	const rounds = 200000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < rounds; i++ {
			cl.GetByListener("tcp")
		}
	}()
	writer := make(chan struct{})
	go func() {
		defer close(writer)
		for i := 0; i < rounds; i++ {
			id := fmt.Sprintf("w%d", i%4)
			cl.Add(&Client{ID: id, Net: ClientConnection{Listener: "tcp"}})
			cl.Delete(id)
		}
	}()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for _, ch := range []chan struct{}{done, writer} {
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatal("GetByListener and Delete deadlocked (a recursive read lock with a writer queued)")
		}
	}
}
