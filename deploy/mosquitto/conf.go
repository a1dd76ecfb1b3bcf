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

// ShippedProduction is mosquitto-production.conf as shipped, and ShippedACL
// its acl_file.
//
//go:embed mosquitto-production.conf
var ShippedProduction string

//go:embed acl
var ShippedACL string

// Production returns the shipped production settings for a broker on
// 127.0.0.1: the password listener on passwordPort, the certificate
// listener on certPort, and every file (certs/server.pem, server.key,
// device-ca.pem; passwd; acl; the persistence file) in dir. It panics if
// the shipped file no longer has a line it rewrites.
func Production(passwordPort, certPort int, dir string) string {
	dir = strings.TrimSuffix(dir, "/")
	conf := ShippedProduction
	for _, r := range [][2]string{
		{"listener 8883\n", "listener " + strconv.Itoa(passwordPort) + " 127.0.0.1\n"},
		{"listener 8884\n", "listener " + strconv.Itoa(certPort) + " 127.0.0.1\n"},
		{"/mosquitto/certs/", dir + "/"},
		{"/mosquitto/config/", dir + "/"},
		{"/mosquitto/data/", dir + "/"},
	} {
		if !strings.Contains(conf, r[0]) {
			panic("mosquitto-production.conf lacks " + r[0])
		}
		conf = strings.ReplaceAll(conf, r[0], r[1])
	}
	conf += "\n# local run: log to stderr\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
	if os.Geteuid() == 0 {
		conf += "user root\n"
	}
	return conf
}
