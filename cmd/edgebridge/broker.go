package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/tlsfiles"
	"github.com/edgebridge/edgebridge/node"
)

// brokerCmd runs one embedded broker as its own process until SIGINT or
// SIGTERM: "kafka" (kfake, every produced batch fsynced unless -fsync=false)
// or "mqtt" (mochi with a bbolt store). Data survives restarts and kill -9.
func brokerCmd(args []string) error {
	kind := "kafka|mqtt"
	if len(args) > 0 && (args[0] == "kafka" || args[0] == "mqtt") {
		kind, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("broker "+kind, flag.ContinueOnError)
	defListen := map[string]string{"kafka": embedded.DefaultKafkaListen, "mqtt": embedded.DefaultMQTTListen}[kind]
	listen := fs.String("listen", defListen, "listen address (port 0 picks a free one; default 127.0.0.1:9092 for kafka, 127.0.0.1:1883 for mqtt)")
	data := fs.String("data", "./edgebridge-data", "data directory")
	partitions := fs.Int("partitions", embedded.DefaultPartitions, "partitions of auto-created topics (kafka)")
	advertise := fs.String("advertise", "", "host:port clients are told to use, if not the listen address (kafka)")
	fsync := fs.Bool("fsync", true, "fsync every produced batch before acknowledging it (kafka); false = page cache only, as Apache Kafka's default")
	tlsCert := fs.String("tls-cert", "", "a certificate of your own (PEM; re-read when it changes): kafka serves TLS only; mqtt uses it on -tls-listen instead of the site CA's")
	tlsKey := fs.String("tls-key", "", "the key of -tls-cert")
	saslMech := fs.String("sasl-mechanism", "", "require SASL logins with this mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (kafka)")
	saslUser := fs.String("sasl-user", "", "the one account -sasl-mechanism accepts (kafka)")
	saslPassword := fs.String("sasl-password-file", "", "that account's password (the file's content, read at start) (kafka)")
	deleteAfter := fs.Duration("delete-committed-after", embedded.DefaultDeleteCommittedAfter, "delete records every consumer group has committed once committed this long; 0 keeps every record (kafka)")
	expiry := fs.Duration("message-expiry", embedded.DefaultMessageExpiry, "how long a message waits for a client that is offline (mqtt)")
	minFree := fs.Int64("min-free-bytes", embedded.DefaultMinFreeBytes, "refuse produces (KAFKA_STORAGE_ERROR) while the data disk has less free; 0 turns it off (kafka)")
	var m mqttFlags
	fs.StringVar(&m.tlsListen, "tls-listen", "", "a TLS listener for devices with passwords, e.g. 0.0.0.0:8883 (mqtt: mqtt.embedded_tls.listen)")
	fs.StringVar(&m.certListen, "cert-listen", "", "a TLS listener for devices with client certificates, e.g. 0.0.0.0:8884 (mqtt: embedded_tls.cert_listen)")
	fs.StringVar(&m.names, "names", "", "comma-separated names and addresses devices (and the bridge) dial, for the site CA's certificate (mqtt: embedded_tls.names)")
	fs.StringVar(&m.clientCA, "client-ca", "", "the CA of devices' certificates, with a -tls-cert of your own (mqtt: embedded_tls.client_ca_file)")
	fs.StringVar(&m.passwords, "password-file", "", "devices' passwords, Mosquitto's format (mqtt; default with -tls-listen: DATA/site/passwd, what edgebridge device add -data DATA writes)")
	fs.StringVar(&m.bridgePassword, "bridge-password-file", "", "the bridge's password (user edgebridge), generated into this file when it does not exist: the bridge's mqtt.password_file on a shared volume (mqtt; default with logins: DATA/site/bridge.password)")
	fs.BoolVar(&m.insecure, "allow-insecure", false, "take devices on a -listen off loopback in clear text, or on -tls-listen without logins (mqtt: embedded_allow_insecure)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: edgebridge broker kafka|mqtt [flags]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if kind == "kafka|mqtt" {
		fs.Usage()
		return errors.New("broker: want \"broker kafka\" or \"broker mqtt\"")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var addr string
	var closeFn func()
	switch kind {
	case "kafka":
		kc := embedded.KafkaConfig{Listen: *listen, DataDir: *data, Partitions: *partitions, Advertise: *advertise, NoFsync: !*fsync, Logger: log,
			DeleteCommittedAfter: *deleteAfter, MinFreeBytes: *minFree}
		if *tlsCert != "" || *tlsKey != "" {
			tc, err := tlsfiles.Files{CertFile: *tlsCert, KeyFile: *tlsKey}.Server()
			if err != nil {
				return err
			}
			kc.TLS = tc
		}
		if *saslMech != "" {
			pw, err := config.SASL{PasswordFile: *saslPassword}.Password()
			if err != nil || pw == "" {
				return fmt.Errorf("broker kafka: -sasl-password-file: %v", errors.Join(err, errors.New("a password is required")))
			}
			kc.SASL = &embedded.KafkaUser{Mechanism: *saslMech, User: *saslUser, Password: pw}
		}
		k, err := embedded.ListenKafka(kc)
		if err != nil {
			return err
		}
		addr, closeFn = k.Addr(), k.Close
	case "mqtt":
		m.listen, m.data, m.cert, m.key, m.expiry = *listen, *data, *tlsCert, *tlsKey, *expiry
		mc, site, err := m.config(log)
		if err != nil {
			return err
		}
		if site != nil {
			go site.Keep(ctx)
		}
		b, err := embedded.ListenMQTT(mc)
		if err != nil {
			return err
		}
		addr, closeFn = b.Addr(), b.Close
		log.Info("edgebridge: mqtt listeners", "tls_addr", b.TLSAddr(), "cert_addr", b.CertAddr(), "auth", mc.Auth != nil)
	}
	// The first stdout line names the (advertised) address, for scripts that pass port 0.
	fmt.Printf("edgebridge %s broker listening on %s\n", kind, addr)
	log.Info("edgebridge: broker up", "kind", kind, "addr", addr, "data", *data)
	<-ctx.Done()
	log.Info("edgebridge: broker stopping", "kind", kind)
	closeFn()
	return nil
}

// mqttFlags are broker mqtt's flags: the bridge's mqtt.embedded_* settings
// under other names, checked by the same rules.
type mqttFlags struct {
	listen, data, cert, key, clientCA, tlsListen, certListen, names string
	passwords, bridgePassword                                       string
	insecure                                                        bool
	expiry                                                          time.Duration
}

// flagNames renames config keys in a problem to the flags that set them,
// longest key first.
var flagNames = strings.NewReplacer(
	"mqtt.embedded_tls.client_ca_file", "-client-ca", "mqtt.embedded_tls.cert_listen", "-cert-listen",
	"mqtt.embedded_tls.listen", "-tls-listen", "mqtt.embedded_tls.names", "-names", "mqtt.embedded_tls", "-tls-listen",
	"mqtt.embedded_auth.password_file", "-password-file", "mqtt.embedded_allow_insecure: true", "-allow-insecure",
	"mqtt.embedded_listen", "-listen", "embedded_listen", "-listen", "embedded_auth", "-password-file")

// config is the broker's configuration, built as `run` builds the
// embedded broker's, and the site identity to keep renewed (nil without
// one).
func (m mqttFlags) config(log *slog.Logger) (embedded.MQTTConfig, *node.Site, error) {
	cfg := config.Default()
	cfg.Kafka.DataDir = m.data
	cfg.MQTT.EmbeddedListen, cfg.MQTT.EmbeddedMessageExpiry, cfg.MQTT.EmbeddedAllowInsecure = m.listen, m.expiry, m.insecure
	cfg.MQTT.EmbeddedTLS = config.EmbeddedTLS{Listen: m.tlsListen, CertListen: m.certListen, CertFile: m.cert, KeyFile: m.key,
		ClientCAFile: m.clientCA, Names: strings.Split(m.names, ",")}
	cfg.MQTT.EmbeddedAuth.PasswordFile = m.passwords
	if m.passwords == "" && m.tlsListen != "" {
		cfg.MQTT.EmbeddedAuth.PasswordFile = filepath.Join(node.SiteDir(m.data), devices.PasswordFile)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return embedded.MQTTConfig{}, nil, errors.New("broker mqtt: " + flagNames.Replace(err.Error()))
	}
	var password string
	if cfg.MQTT.AuthEnabled() {
		file := m.bridgePassword
		if file == "" {
			file = filepath.Join(node.SiteDir(m.data), node.BridgePasswordFile)
		}
		var err error
		if password, err = node.GeneratedSecret(file); err != nil {
			return embedded.MQTTConfig{}, nil, fmt.Errorf("broker mqtt: -bridge-password-file: %w", err)
		}
	}
	mc, _, site, err := node.EmbeddedMQTT(cfg, log, password)
	return mc, site, err
}
