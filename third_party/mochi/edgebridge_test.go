package mqtt

import (
	"io"
	"testing"

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
