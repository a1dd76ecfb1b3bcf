package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/node"
	"github.com/edgebridge/edgebridge/payment"
	"github.com/edgebridge/edgebridge/siteca"
)

func demoCmd(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	nDevices := fs.Int("devices", 50, "simulated devices")
	requests := fs.Int("requests", 100, "requests per device")
	outstanding := fs.Int("outstanding", 4, "requests in flight per device")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	verbose := fs.Bool("v", false, "log the bridge's info messages")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	dir, err := os.MkdirTemp("", "edgebridge-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// paymentd, in-process, on a free port.
	ledger, err := payment.OpenLedger(filepath.Join(dir, "ledger.jsonl"))
	if err != nil {
		return err
	}
	defer ledger.Close()
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	gs := backend.NewGRPCServer()
	backend.NewServer(backend.Config{ID: "paymentd-demo"}, payment.Handler(payment.DefaultLimit), ledger, backend.WithLogger(log)).Register(gs)
	go func() { _ = gs.Serve(bln) }()
	defer gs.Stop()

	// The embedded brokers as shipped: devices over TLS with the site CA's
	// certificate, each logging in with a password `edgebridge device add`
	// would give it (package devices writes the same file).
	cfg := config.Default()
	cfg.MQTT.EmbeddedListen = "127.0.0.1:0"
	cfg.MQTT.EmbeddedAuth.PasswordFile = filepath.Join(node.SiteDir(dir), devices.PasswordFile)
	cfg.MQTT.EmbeddedTLS = config.EmbeddedTLS{Listen: "127.0.0.1:0", Names: []string{"127.0.0.1"}}
	cfg.Kafka.EmbeddedListen = "127.0.0.1:0"
	cfg.Kafka.DataDir = dir
	cfg.Backend.Targets = []string{bln.Addr().String()}
	cfg.Admin.Listen = "127.0.0.1:0"
	sim := devicesim.Config{Devices: *nDevices, Requests: *requests, Outstanding: *outstanding}
	passwords, err := provisionDemoDevices(node.SiteDir(dir), sim)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan node.Running, 1)
	bridgeDone := make(chan error, 1)
	go func() {
		bridgeDone <- node.Run(ctx, cfg, log, node.WithBuildInfo(buildInfo()), node.OnStart(func(r node.Running) { started <- r }))
	}()
	var live node.Running
	select {
	case live = <-started:
	case err := <-bridgeDone:
		return fmt.Errorf("demo: bridge did not start: %w", err)
	}
	site, err := siteca.Load(node.SiteDir(dir))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(site.CAPEM())
	sim.Broker = "ssl://" + live.DeviceTLS
	sim.Connect = func(id string) devicesim.Conn {
		return devicesim.Conn{Username: id, Password: passwords[id], TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	}
	fmt.Printf("edgebridge demo: devices %s (TLS, a password each), backend %s, admin http://%s/metrics\n", sim.Broker, bln.Addr(), live.Config.Admin.Listen)
	if err := waitReady(ctx, live.Bridge, 30*time.Second); err != nil {
		return err
	}
	fmt.Printf("sending %d devices x %d requests (%d in flight per device)\n", *nDevices, *requests, *outstanding)

	runCtx, stopRun := context.WithTimeout(ctx, *timeout)
	defer stopRun()
	total := *nDevices * *requests
	res, err := devicesim.Run(runCtx, sim, func(sent, replied int) {
		fmt.Printf("  sent %6d/%d  replied %6d/%d\n", sent, total, replied, total)
	})
	if err != nil {
		return err
	}
	cancel()
	if err := <-bridgeDone; err != nil {
		log.Warn("demo: bridge stopped with error", "err", err)
	}

	secs := res.Elapsed.Seconds()
	fmt.Printf(`
summary
  sent        %d
  replied     %d (duplicate replies %d)
  approved    %d
  declined    %d
  rejected    %d
  errors      %d
  throughput  %.0f req/s
  latency     p50 %s  p99 %s  max %s
  ledger      %d payments processed once
`, res.Sent, res.Replied, res.Duplicates,
		res.ByStatus["APPROVED"], res.ByStatus["DECLINED"], res.ByStatus["REJECTED"], res.ByStatus["ERROR"],
		float64(res.Replied)/secs,
		res.Percentile(50).Round(10*time.Microsecond), res.Percentile(99).Round(10*time.Microsecond), res.Percentile(100).Round(10*time.Microsecond),
		ledger.Len())
	if res.Replied != total {
		return fmt.Errorf("demo: %d of %d requests got no reply (first: %v)", total-res.Replied, total, head(res.Missing, 5))
	}
	fmt.Println("demo ok: every request got its reply")
	return nil
}

// provisionDemoDevices gives every simulated device of sim a password in
// the site directory, as `edgebridge device add` does, and returns them.
func provisionDemoDevices(dir string, sim devicesim.Config) (map[string]string, error) {
	if err := os.MkdirAll(dir, siteca.DirMode); err != nil {
		return nil, err
	}
	reg := devices.Open(dir)
	passwords := map[string]string{}
	for i := range sim.Devices {
		id, pw := sim.DeviceID(i+1), devices.NewPassword() // devicesim counts from 1
		if err := reg.AddPassword(id, []byte(pw)); err != nil {
			return nil, err
		}
		passwords[id] = pw
	}
	return passwords, nil
}

func waitReady(ctx context.Context, b *bridge.Bridge, limit time.Duration) error {
	return await.Cond(ctx, limit, "demo: bridge ready", func() error {
		if ok, why := b.Ready(); !ok {
			return fmt.Errorf("%v", why)
		}
		return nil
	})
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }
