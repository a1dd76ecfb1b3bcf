package embedded

import (
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
)

// TestBoltStoreLeavesOutSysInfoTick: the $SYS tick, which raced with
// mochi's Close, never reaches the store; what persistence needs still does.
func TestBoltStoreLeavesOutSysInfoTick(t *testing.T) {
	s := &boltStore{Hook: new(bolt.Hook)}
	if s.Provides(mqtt.OnSysInfoTick) {
		t.Error("boltStore provides OnSysInfoTick")
	}
	for _, ev := range []byte{mqtt.OnSubscribed, mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.StoredInflightMessages, mqtt.OnSessionEstablished} {
		if !s.Provides(ev) {
			t.Errorf("boltStore does not provide event %d", ev)
		}
	}
}
