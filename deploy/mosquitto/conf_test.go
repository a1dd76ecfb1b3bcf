package mosquitto_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/edgebridge/edgebridge/deploy/mosquitto"
	"github.com/edgebridge/edgebridge/embedded"
)

func TestLocalRewritesListenerAndPersistence(t *testing.T) {
	conf := mosquitto.Local(18830, "/tmp/x")
	for _, want := range []string{"listener 18830 127.0.0.1\n", "persistence_location /tmp/x/\n", "set_tcp_nodelay true\n", "max_queued_messages 0\n",
		"max_packet_size " + strconv.Itoa(embedded.MaxPacketSize) + "\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	for _, gone := range []string{"listener 1883 ", "/var/lib/mosquitto"} {
		if strings.Contains(conf, gone) {
			t.Errorf("config still has %q", gone)
		}
	}
}
