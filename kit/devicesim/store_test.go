package devicesim

import (
	"context"
	"slices"
	"strconv"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

func TestOrderedStoreAll(t *testing.T) {
	tests := []struct {
		name string
		ids  []uint16
		want []string
	}{
		{name: "in order", ids: []uint16{7, 3, 5, 4}, want: []string{"o.3", "o.4", "o.5", "o.7"}},
		{name: "across the wrap", ids: []uint16{2, 65534, 1, 65535}, want: []string{"o.65534", "o.65535", "o.1", "o.2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newOrderedStore()
			s.Open()
			defer s.Close()
			for _, id := range tc.ids {
				p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
				p.MessageID = id
				s.Put("o."+strconv.Itoa(int(id)), p)
			}
			if got := s.All(); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// Get hands out copies (paho's resume sets DUP on what Get returns), and
// WaitSent waits for every stored outbound packet to be deleted (its PUBACK).
func TestOrderedStoreCopiesAndWaitSent(t *testing.T) {
	s := newOrderedStore()
	s.Open()
	defer s.Close()
	if !s.WaitSent(t.Context()) {
		t.Fatal("WaitSent on an empty store: got false, want true")
	}
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.MessageID, p.Qos, p.TopicName, p.Payload = 9, 1, "payment/request/d", []byte(`{"request_id":"r-1"}`)
	s.Put("o.9", p)
	s.Put("i.4", packets.NewControlPacket(packets.Puback))
	got := s.Get("o.9").(*packets.PublishPacket)
	got.Dup = true
	if again := s.Get("o.9").(*packets.PublishPacket); again.Dup || again == p || string(again.Payload) != string(p.Payload) {
		t.Fatalf("got %+v, want an unchanged copy", again)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if s.WaitSent(ctx) {
		t.Fatal("WaitSent with a packet awaiting its PUBACK: got true, want false")
	}
	s.Del("i.4") // inbound packets do not count
	if s.WaitSent(ctx) {
		t.Fatal("WaitSent after deleting an inbound packet: got true, want false")
	}
	s.Del("o.9")
	if !s.WaitSent(t.Context()) {
		t.Fatal("WaitSent after the PUBACK: got false, want true")
	}
}
