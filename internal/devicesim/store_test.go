package devicesim

import (
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
