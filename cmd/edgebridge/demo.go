package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/rig"
	"github.com/edgebridge/edgebridge/node"
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

	// The embedded brokers as shipped, paymentd in-process: devices over TLS
	// with the site CA's certificate, each logging in with a password
	// `edgebridge device add` would give it.
	r, err := rig.New(dir, rig.Shipped(), rig.Logger(log), rig.NodeOptions(node.WithBuildInfo(buildInfo())))
	if err != nil {
		return err
	}
	defer r.Close()
	sim := devicesim.Config{Devices: *nDevices, Requests: *requests, Outstanding: *outstanding}
	passwords := map[string]string{}
	for i := range sim.Devices {
		id := sim.DeviceID(i + 1) // devicesim counts from 1
		if passwords[id], err = r.AddDevice(id); err != nil {
			return err
		}
	}
	if err := r.Start(); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	tlsConf, err := r.DeviceTLS()
	if err != nil {
		return err
	}
	sim.Broker = r.DeviceURL()
	sim.Connect = func(id string) devicesim.Conn {
		return devicesim.Conn{Username: id, Password: passwords[id], TLS: tlsConf}
	}
	fmt.Printf("edgebridge demo: devices %s (TLS, a password each), backend %s, admin http://%s/metrics\n", sim.Broker, r.Backend, r.Running.Config.Admin.Listen)
	ctx := context.Background()
	if err := r.AwaitReady(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("demo: %w", err)
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
	if err := r.Stop(); err != nil {
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
		r.Ledger.Len())
	if res.Replied != total {
		return fmt.Errorf("demo: %d of %d requests got no reply (first: %v)", total-res.Replied, total, head(res.Missing, 5))
	}
	fmt.Println("demo ok: every request got its reply")
	return nil
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }
