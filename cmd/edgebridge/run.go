package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/tlsfiles"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/siteca"
	"github.com/edgebridge/edgebridge/tracing"
)

func loadConfig(path string) (config.Config, error) {
	if path == "" {
		return config.Default(), nil
	}
	return config.Load(path)
}

func validateCmd(args []string) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	path := configFlag(fs, "config file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return errors.New("validate: -config (or $EDGEBRIDGE_CONFIG) is required")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(os.Stderr, "warning:", w)
	}
	fmt.Println("config ok")
	return nil
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	path := configFlag(fs, "config file; none: embedded brokers, backend 127.0.0.1:7070")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log)
	for _, w := range cfg.Warnings() {
		log.Warn("edgebridge: insecure setting: " + w)
	}
	ctx := shutdownContext(log)
	return runBridge(ctx, cfg, log, nil)
}

// newLogger writes to stderr as log.format and log.level say.
func newLogger(c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated: debug, info, warn, error
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// shutdownContext ends on the first SIGINT/SIGTERM (graceful drain); a
// second signal exits at once. Nothing is lost either way: what was not
// committed is redelivered on the next start.
func shutdownContext(log *slog.Logger) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		log.Info("edgebridge: draining; signal again to abort", "signal", s.String())
		cancel()
		<-sigs
		log.Warn("edgebridge: aborted")
		os.Exit(130)
	}()
	return ctx
}

// running is a bridge runBridge started: its config as it runs (brokers'
// and admin addresses resolved) and the embedded MQTT broker's device TLS
// listener, if any.
type running struct {
	bridge    *bridge.Bridge
	cfg       config.Config
	deviceTLS string
}

// runBridge starts the embedded brokers cfg asks for, then the bridge and its
// admin server, until ctx ends. ready, if not nil, is called once the bridge
// is constructed.
func runBridge(ctx context.Context, cfg config.Config, log *slog.Logger, ready func(running)) error {
	var deviceTLS string
	var dataDisk string // the embedded Kafka broker's, watched for free space
	if cfg.EmbeddedKafka() {
		kc, err := embeddedKafkaConfig(cfg)
		if err != nil {
			return err
		}
		kc.Logger = log
		k, err := embedded.ListenKafka(kc)
		if err != nil {
			return err
		}
		defer k.Close()
		cfg.Kafka.Brokers = []string{k.Addr()}
		dataDisk = kc.DataDir
		cfg.Kafka.EmbeddedTLS = config.EmbeddedKafkaTLS{}
		log.Info("edgebridge: embedded kafka", "addr", k.Addr(), "data_dir", cfg.Kafka.DataDir)
	}
	opts := []bridge.Option{bridge.WithLogger(log), bridge.WithBuildInfo(buildInfo())}
	if dataDisk != "" {
		opts = append(opts, bridge.WithDataDisk(dataDisk))
	}
	if cfg.Tracing.Endpoint != "" {
		tlsConf, err := cfg.Tracing.TLS.Config()
		if err != nil {
			return fmt.Errorf("tracing.tls: %w", err)
		}
		tp, shutdown, err := tracing.Setup(tracing.Config{Endpoint: cfg.Tracing.Endpoint, SampleRatio: cfg.Tracing.SampleRatio,
			TLS: tlsConf, Service: "edgebridge", Version: buildInfo().Version})
		if err != nil {
			return err
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = shutdown(ctx) // flush the last spans
		}()
		opts = append(opts, bridge.WithTracerProvider(tp))
		log.Info("edgebridge: tracing", "endpoint", cfg.Tracing.Endpoint, "sample_ratio", cfg.Tracing.SampleRatio)
	}
	if cfg.EmbeddedMQTT() {
		mc, mopts, site, err := embeddedMQTTConfig(cfg, log, "")
		if err != nil {
			return err
		}
		if site != nil {
			go site.keep(ctx)
		}
		// Device requests are taken inside the broker: a device's PUBACK
		// waits for the Kafka write.
		intake := mqttin.NewIntake(cfg.MQTT.Subscribe, 0)
		mc.Intake = intake
		opts = append(opts, bridge.WithIntake(intake))
		m, err := embedded.ListenMQTT(mc)
		if err != nil {
			return err
		}
		defer m.Close()
		defer intake.Close() // before the broker's Close: no device left waiting
		deviceTLS = m.TLSAddr()
		// The bridge is now a client of that broker; its embedded settings are spent.
		cfg.MQTT.Broker = "tcp://" + m.Addr()
		cfg.MQTT.EmbeddedAuth, cfg.MQTT.EmbeddedTLS = config.EmbeddedAuth{}, config.EmbeddedTLS{}
		opts = append(opts, mopts...)
		if mc.Auth != nil {
			opts = append(opts, bridge.WithLoginFailures(m.LoginFailures))
		}
		log.Info("edgebridge: embedded mqtt", "addr", m.Addr(), "tls_addr", m.TLSAddr(), "cert_addr", m.CertAddr(), "auth", mc.Auth != nil)
	}
	b, err := bridge.New(cfg, opts...)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("admin listen: %w", err)
	}
	log.Info("edgebridge: admin", "addr", ln.Addr().String())
	if ready != nil {
		cfg.Admin.Listen = ln.Addr().String()
		ready(running{bridge: b, cfg: cfg, deviceTLS: deviceTLS})
	}
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	var g errgroup.Group
	g.Go(func() error { return b.ServeAdmin(adminCtx, ln) })
	err = b.Run(ctx)
	stopAdmin()
	return errors.Join(err, g.Wait())
}

// embeddedMQTTConfig is the embedded broker's configuration; the bridge's
// options for it: when it authenticates clients, the bridge's own account
// on it (a password generated now, held in memory only), and the expiry of
// a certificate from the site CA; and that site identity (nil with
// certificates of the user's own), to keep renewed.
//
// bridgePassword is the bridge's password; empty: one generated now.
func embeddedMQTTConfig(cfg config.Config, log *slog.Logger, bridgePassword string) (embedded.MQTTConfig, []bridge.Option, *siteIdentity, error) {
	mc := embedded.MQTTConfig{Listen: cfg.MQTT.EmbeddedListen, DataDir: cfg.Kafka.DataDir + "/mqtt", Logger: log,
		MessageExpiry: cfg.MQTT.EmbeddedMessageExpiry}
	var opts []bridge.Option
	if cfg.MQTT.AuthEnabled() {
		if bridgePassword == "" {
			bridgePassword = newSecret()
		}
		user, password := cfg.MQTT.Username, bridgePassword
		if user == "" {
			user = siteca.BridgeUser
		}
		mc.Auth = &embedded.Auth{PasswordFile: cfg.MQTT.EmbeddedAuth.PasswordFile, BridgeUser: user, BridgePassword: password,
			SeenFile: filepath.Join(siteDir(cfg.Kafka.DataDir), devices.SeenFile)}
		opts = append(opts, bridge.WithMQTTCredentials(user, func() (string, error) { return password, nil }))
	}
	var site *siteIdentity
	if t := cfg.MQTT.EmbeddedTLS; t.Listen != "" {
		files := tlsfiles.Files{CAFile: t.ClientCAFile, CertFile: t.CertFile, KeyFile: t.KeyFile}
		if t.CertFile == "" { // no certificate of the user's: the site CA's
			var err error
			if site, err = ensureSiteIdentity(siteDir(cfg.Kafka.DataDir), t.Names, log); err != nil {
				return mc, nil, nil, fmt.Errorf("mqtt.embedded_tls: %w", err)
			}
			files.CertFile, files.KeyFile = site.site.ServerFiles()
			opts = append(opts, bridge.WithServerCertificate(site.expiry))
		}
		files.CRLFile = t.CRLFile
		if t.CertListen != "" {
			// Two listeners: passwords on listen, client certificates (from
			// client_ca_file or the site CA, revoked in its CRL) on cert_listen.
			certs := files
			if certs.CAFile == "" {
				certs.CAFile = site.site.CAFile()
				if certs.CRLFile == "" {
					certs.CRLFile = filepath.Join(siteDir(cfg.Kafka.DataDir), devices.CRLFile)
				}
			}
			ctc, err := certs.Server()
			if err != nil {
				return mc, nil, nil, fmt.Errorf("mqtt.embedded_tls.cert_listen: %w", err)
			}
			mc.CertListen, mc.CertTLS = t.CertListen, ctc
			if certs.CRLFile != "" {
				mc.Revoked = tlsfiles.NewCRL(certs.CRLFile, certs.CAFile).Revoked
			}
			files.CAFile, files.CRLFile = "", ""
		} else if files.CAFile != "" && files.CRLFile != "" {
			mc.Revoked = tlsfiles.NewCRL(files.CRLFile, files.CAFile).Revoked
		}
		tc, err := files.Server()
		if err != nil {
			return mc, nil, nil, fmt.Errorf("mqtt.embedded_tls: %w", err)
		}
		mc.TLSListen, mc.TLS, mc.ClientCertIdentity = t.Listen, tc, files.CAFile != ""
	}
	return mc, opts, site, nil
}

// newSecret is 32 random bytes in hex: a password no one chose.
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

// embeddedKafkaConfig is the in-process Kafka broker's configuration: TLS
// with kafka.embedded_tls, and kafka.sasl as its one account.
func embeddedKafkaConfig(cfg config.Config) (embedded.KafkaConfig, error) {
	kc := embedded.KafkaConfig{Listen: cfg.Kafka.EmbeddedListen, DataDir: cfg.Kafka.DataDir, Partitions: cfg.Kafka.Partitions,
		DeleteCommittedAfter: max(cfg.Kafka.DeleteCommittedAfter, 0)}
	if cfg.Kafka.MinFreeBytes > 0 {
		// The bridge pauses intake at min_free_bytes; the broker refuses
		// writes at half of it, a backstop for writes past the pause.
		kc.MinFreeBytes = cfg.Kafka.MinFreeBytes / 2
	}
	if t := cfg.Kafka.EmbeddedTLS; t.CertFile != "" {
		tc, err := tlsfiles.Files{CertFile: t.CertFile, KeyFile: t.KeyFile}.Server()
		if err != nil {
			return kc, fmt.Errorf("kafka.embedded_tls: %w", err)
		}
		kc.TLS = tc
	}
	if s := cfg.Kafka.SASL; s.Mechanism != "" {
		pw, err := s.Password()
		if err != nil {
			return kc, fmt.Errorf("kafka.sasl.password_file: %w", err)
		}
		kc.SASL = &embedded.KafkaUser{Mechanism: s.Mechanism, User: s.Username, Password: pw}
	}
	return kc, nil
}

// configCmd runs `edgebridge config defaults`: every setting with its
// default and meaning, as YAML that is itself a valid config (-markdown:
// docs/CONFIGURATION.md).
func configCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "defaults" {
		return errors.New("config: usage: edgebridge config defaults [-markdown]")
	}
	fs := flag.NewFlagSet("config defaults", flag.ContinueOnError)
	markdown := fs.Bool("markdown", false, "as docs/CONFIGURATION.md")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	out := config.DefaultsYAML()
	if *markdown {
		out = config.DefaultsMarkdown()
	}
	_, err := stdout.Write(out)
	return err
}
