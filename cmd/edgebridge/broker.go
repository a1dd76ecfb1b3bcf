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
	"syscall"
	"time"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/tlsfiles"
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
	defListen := map[string]string{"kafka": "127.0.0.1:9092", "mqtt": "127.0.0.1:1883"}[kind]
	listen := fs.String("listen", defListen, "listen address (port 0 picks a free one; default 127.0.0.1:9092 for kafka, 127.0.0.1:1883 for mqtt)")
	data := fs.String("data", "./edgebridge-data", "data directory")
	partitions := fs.Int("partitions", 8, "partitions of auto-created topics (kafka)")
	advertise := fs.String("advertise", "", "host:port clients are told to use, if not the listen address (kafka)")
	fsync := fs.Bool("fsync", true, "fsync every produced batch before acknowledging it (kafka); false = page cache only, as Apache Kafka's default")
	tlsCert := fs.String("tls-cert", "", "serve TLS only, with this certificate (PEM; re-read when it changes)")
	tlsKey := fs.String("tls-key", "", "the key of -tls-cert")
	saslMech := fs.String("sasl-mechanism", "", "require SASL logins with this mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (kafka)")
	saslUser := fs.String("sasl-user", "", "the one account -sasl-mechanism accepts (kafka)")
	saslPassword := fs.String("sasl-password-file", "", "that account's password (the file's content, read at start) (kafka)")
	deleteAfter := fs.Duration("delete-committed-after", time.Minute, "delete records every consumer group has committed once committed this long; 0 keeps every record (kafka)")
	expiry := fs.Duration("message-expiry", embedded.DefaultMessageExpiry, "how long a message waits for a client that is offline (mqtt)")
	minFree := fs.Int64("min-free-bytes", 256<<20, "refuse produces (KAFKA_STORAGE_ERROR) while the data disk has less free; 0 turns it off (kafka)")
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
		m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: *listen, DataDir: filepath.Join(*data, "mqtt"), Logger: log, MessageExpiry: *expiry})
		if err != nil {
			return err
		}
		addr, closeFn = m.Addr(), m.Close
	}
	// The first stdout line names the (advertised) address, for scripts that pass port 0.
	fmt.Printf("edgebridge %s broker listening on %s\n", kind, addr)
	log.Info("edgebridge: broker up", "kind", kind, "addr", addr, "data", *data)
	<-ctx.Done()
	log.Info("edgebridge: broker stopping", "kind", kind)
	closeFn()
	return nil
}
