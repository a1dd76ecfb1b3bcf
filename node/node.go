// Package node is edgebridge's composition root: from a config.Config it
// starts what `edgebridge run` runs — the embedded brokers the config asks
// for, with the site's own identity (siteca), tracing, the bridge and its
// admin server — until the context ends. cmd/edgebridge keeps the flags,
// the output and the exit codes; the demo runs a node too.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/schedule"
	"github.com/edgebridge/edgebridge/internal/tlsfiles"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/siteca"
	"github.com/edgebridge/edgebridge/tracing"
)

// Option configures Run.
type Option func(*options)

type options struct {
	onStart func(Running)
	build   bridge.BuildInfo
	bridge  []bridge.Option
}

// OnStart calls f once the bridge is constructed, with its config as it
// runs (brokers' and admin addresses resolved).
func OnStart(f func(Running)) Option { return func(o *options) { o.onStart = f } }

// WithBuildInfo is the version the bridge reports (metrics, /status, traces).
func WithBuildInfo(bi bridge.BuildInfo) Option { return func(o *options) { o.build = bi } }

// WithBridgeOptions are more options for the bridge, after the node's own
// (tests: the pool's event hook, a logger).
func WithBridgeOptions(opts ...bridge.Option) Option {
	return func(o *options) { o.bridge = append(o.bridge, opts...) }
}

// Running is a bridge Run started: its config as it runs (brokers'
// and admin addresses resolved) and the embedded MQTT broker's device TLS
// listener, if any.
type Running struct {
	Bridge    *bridge.Bridge
	Config    config.Config
	DeviceTLS string
}

// Run starts the embedded brokers cfg asks for (with the site's identity),
// tracing, then the bridge and its admin server, until ctx ends; then it
// drains and stops them. opts.OnStart, if set, is called once the bridge
// is constructed.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger, opts ...Option) error {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	ready := o.onStart
	var deviceTLS string
	var dataDisk string // the embedded Kafka broker's, watched for free space
	if cfg.EmbeddedKafka() {
		kc, err := embeddedKafka(cfg)
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
	bopts := []bridge.Option{bridge.WithLogger(log), bridge.WithBuildInfo(o.build)}
	if dataDisk != "" {
		bopts = append(bopts, bridge.WithDataDisk(dataDisk))
	}
	if cfg.Tracing.Endpoint != "" {
		tlsConf, err := cfg.Tracing.TLS.Config()
		if err != nil {
			return fmt.Errorf("tracing.tls: %w", err)
		}
		tp, shutdown, err := tracing.Setup(tracing.Config{Endpoint: cfg.Tracing.Endpoint, SampleRatio: cfg.Tracing.SampleRatio,
			TLS: tlsConf, Service: "edgebridge", Version: o.build.Version})
		if err != nil {
			return err
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = shutdown(ctx) // flush the last spans
		}()
		bopts = append(bopts, bridge.WithTracerProvider(tp))
		log.Info("edgebridge: tracing", "endpoint", cfg.Tracing.Endpoint, "sample_ratio", cfg.Tracing.SampleRatio)
	}
	if cfg.EmbeddedMQTT() {
		mc, mopts, site, err := EmbeddedMQTT(cfg, log, "")
		if err != nil {
			return err
		}
		if site != nil {
			go site.Keep(ctx)
		}
		// Device requests are taken inside the broker: a device's PUBACK
		// waits for the Kafka write.
		intake := mqttin.NewIntake(cfg.MQTT.Subscribe, 0)
		mc.Intake = intake
		bopts = append(bopts, bridge.WithIntake(intake))
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
		bopts = append(bopts, mopts...)
		if mc.Auth != nil {
			bopts = append(bopts, bridge.WithLoginFailures(m.LoginFailures))
		}
		log.Info("edgebridge: embedded mqtt", "addr", m.Addr(), "tls_addr", m.TLSAddr(), "cert_addr", m.CertAddr(), "auth", mc.Auth != nil)
	}
	b, err := bridge.New(cfg, append(bopts, o.bridge...)...)
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
		ready(Running{Bridge: b, Config: cfg, DeviceTLS: deviceTLS})
	}
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	var g errgroup.Group
	g.Go(func() error { return b.ServeAdmin(adminCtx, ln) })
	err = b.Run(ctx)
	stopAdmin()
	return errors.Join(err, g.Wait())
}

// EmbeddedMQTT is the embedded broker's configuration (for Run and
// `edgebridge broker mqtt`); the bridge's
// options for it: when it authenticates clients, the bridge's own account
// on it (a password generated now, held in memory only), and the expiry of
// a certificate from the site CA; and that site identity (nil with
// certificates of the user's own), to keep renewed.
//
// bridgePassword is the bridge's password; empty: one generated now.
func EmbeddedMQTT(cfg config.Config, log *slog.Logger, bridgePassword string) (embedded.MQTTConfig, []bridge.Option, *Site, error) {
	mc := embedded.MQTTConfig{Listen: cfg.MQTT.EmbeddedListen, DataDir: cfg.Kafka.DataDir + "/mqtt", Logger: log,
		MessageExpiry: cfg.MQTT.EmbeddedMessageExpiry}
	var opts []bridge.Option
	if cfg.MQTT.AuthEnabled() {
		if bridgePassword == "" {
			bridgePassword = devices.NewPassword()
		}
		user, password := cfg.MQTT.Username, bridgePassword
		if user == "" {
			user = siteca.BridgeUser
		}
		mc.Auth = &embedded.Auth{PasswordFile: cfg.MQTT.EmbeddedAuth.PasswordFile, BridgeUser: user, BridgePassword: password,
			SeenFile: filepath.Join(SiteDir(cfg.Kafka.DataDir), devices.SeenFile)}
		opts = append(opts, bridge.WithMQTTCredentials(user, func() (string, error) { return password, nil }))
	}
	var site *Site
	if t := cfg.MQTT.EmbeddedTLS; t.Listen != "" {
		files := tlsfiles.Files{CAFile: t.ClientCAFile, CertFile: t.CertFile, KeyFile: t.KeyFile}
		if t.CertFile == "" { // no certificate of the user's: the site CA's
			var err error
			if site, err = EnsureSite(SiteDir(cfg.Kafka.DataDir), t.Names, log); err != nil {
				return mc, nil, nil, fmt.Errorf("mqtt.embedded_tls: %w", err)
			}
			files.CertFile, files.KeyFile = site.site.ServerFiles()
			opts = append(opts, bridge.WithServerCertificate(site.Expiry))
		}
		files.CRLFile = t.CRLFile
		if t.CertListen != "" {
			// Two listeners: passwords on listen, client certificates (from
			// client_ca_file or the site CA, revoked in its CRL) on cert_listen.
			certs := files
			if certs.CAFile == "" {
				certs.CAFile = site.site.CAFile()
				if certs.CRLFile == "" {
					certs.CRLFile = filepath.Join(SiteDir(cfg.Kafka.DataDir), devices.CRLFile)
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

// embeddedKafka is the in-process Kafka broker's configuration: TLS
// with kafka.embedded_tls, and kafka.sasl as its one account.
func embeddedKafka(cfg config.Config) (embedded.KafkaConfig, error) {
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

// SiteDir is where a data directory keeps the site CA.
func SiteDir(dataDir string) string { return filepath.Join(dataDir, "site") }

// Site is the MQTT broker's TLS certificate from the site CA,
// renewed while the process runs.
type Site struct {
	cfg      siteca.Config
	log      *slog.Logger
	site     *siteca.Site
	notAfter atomic.Int64 // Unix seconds
}

// EnsureSite makes or loads the site CA in the site directory dir
// and a current server certificate for names (empty ones dropped).
func EnsureSite(dir string, names []string, log *slog.Logger) (*Site, error) {
	names = slices.DeleteFunc(names, func(n string) bool { return strings.TrimSpace(n) == "" })
	id := &Site{cfg: siteca.Config{Dir: dir, Names: names}, log: log}
	if err := id.ensure(); err != nil {
		return nil, err
	}
	return id, nil
}

func (id *Site) ensure() error {
	s, made, err := siteca.Ensure(id.cfg)
	if err != nil {
		return fmt.Errorf("site CA: %w", err)
	}
	// The CRL is signed again, so it never goes stale while this runs.
	if err := devices.Open(id.cfg.Dir).Refresh(); err != nil {
		return fmt.Errorf("site CA: the CRL: %w", err)
	}
	id.site = s
	id.notAfter.Store(s.ServerNotAfter().Unix())
	switch made {
	case "ca":
		id.log.Info("edgebridge: made the site CA; devices must trust it (edgebridge site ca prints it), back up its key",
			"dir", id.cfg.Dir, "names", id.cfg.Names)
	case "renewed":
		id.log.Info("edgebridge: renewed the MQTT server certificate", "names", id.cfg.Names, "not_after", s.ServerNotAfter())
	}
	return nil
}

// Expiry is when the server certificate expires.
func (id *Site) Expiry() time.Time { return time.Unix(id.notAfter.Load(), 0) }

// Keep renews the server certificate when it is due and signs the CRL
// again, twice a day, until ctx ends. The broker reads the files again
// when they change.
func (id *Site) Keep(ctx context.Context) {
	schedule.Every(ctx, 12*time.Hour, func(time.Time) {
		if err := id.ensure(); err != nil {
			id.log.Error("edgebridge: cannot renew the MQTT server certificate", "err", err, "not_after", id.Expiry())
		}
	})
}

// BridgePasswordFile is where broker mqtt and `site mosquitto` keep the bridge's generated
// password in the site directory.
const BridgePasswordFile = "bridge.password"

// GeneratedSecret reads the secret in file, or makes one and writes it
// there (readable by the file's group: a bridge in another container on a
// shared volume) when the file does not exist.
func GeneratedSecret(file string) (string, error) {
	raw, err := os.ReadFile(file)
	switch {
	case err == nil:
		if s := strings.TrimRight(string(raw), "\r\n"); s != "" {
			return s, nil
		}
		return "", fmt.Errorf("%s is empty", file)
	case !errors.Is(err, os.ErrNotExist):
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o750); err != nil {
		return "", err
	}
	s := devices.NewPassword()
	return s, siteca.WriteFile(file, []byte(s+"\n"), 0o640)
}
