package config

import (
	"fmt"
	"net"
)

// Warnings lists settings that are valid but expose the site: a listener
// on the network that takes devices without TLS or without a login, an
// embedded Kafka broker reachable in clear text. `validate` prints them
// (its exit code unchanged) and `run` logs them at start.
func (c Config) Warnings() []string {
	var out []string
	if c.EmbeddedMQTT() && !loopback(c.MQTT.EmbeddedListen) {
		switch {
		case !c.MQTT.AuthEnabled():
			out = append(out, fmt.Sprintf("mqtt.embedded_listen %s: any client on the network connects without a login or TLS and can pay as any device (set mqtt.embedded_auth and mqtt.embedded_tls, and keep embedded_listen on 127.0.0.1)", c.MQTT.EmbeddedListen))
		default:
			out = append(out, fmt.Sprintf("mqtt.embedded_listen %s: devices' passwords and payments cross the network in clear text (give devices mqtt.embedded_tls and keep embedded_listen on 127.0.0.1)", c.MQTT.EmbeddedListen))
		}
	}
	if c.EmbeddedMQTT() && c.MQTT.EmbeddedTLS.Listen != "" && !c.MQTT.AuthEnabled() {
		out = append(out, fmt.Sprintf("mqtt.embedded_tls.listen %s: TLS without a login: any client that trusts the certificate can pay as any device (set mqtt.embedded_auth.password_file or cert_listen)", c.MQTT.EmbeddedTLS.Listen))
	}
	if c.EmbeddedKafka() && !loopback(c.Kafka.EmbeddedListen) && c.Kafka.EmbeddedTLS.CertFile == "" {
		out = append(out, fmt.Sprintf("kafka.embedded_listen %s: the embedded Kafka broker serves requests and replies in clear text to the network (keep it on 127.0.0.1 or set kafka.embedded_tls and kafka.sasl)", c.Kafka.EmbeddedListen))
	}
	return out
}

// loopback reports whether a host:port listens on a loopback address only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
