// Package mosquitto holds the Mosquitto settings edgebridge ships
// (mosquitto.conf, next to this file) for the tools that start their own
// broker: the bench and the tests.
package mosquitto

import (
	_ "embed"
	"os"
	"strconv"
	"strings"
)

// Shipped is mosquitto.conf as shipped.
//
//go:embed mosquitto.conf
var Shipped string

// Local returns the shipped settings for a broker that listens on
// 127.0.0.1:port, keeps its persistence file in dir and logs errors and
// warnings to stderr. Started as root, Mosquitto would drop to user
// mosquitto, who cannot write dir: then it stays root.
func Local(port int, dir string) string {
	conf := strings.Replace(Shipped, "listener 1883 127.0.0.1", "listener "+strconv.Itoa(port)+" 127.0.0.1", 1)
	conf = strings.Replace(conf, "persistence_location /var/lib/mosquitto/", "persistence_location "+strings.TrimSuffix(dir, "/")+"/", 1)
	conf += "\n# local run: log to stderr\nlog_dest stderr\nlog_type error\nlog_type warning\n"
	if os.Geteuid() == 0 {
		conf += "user root\n"
	}
	return conf
}
