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
	requests := fs.Int("requests", 100, "requests per device in the throughput phase")
	outstanding := fs.Int("outstanding", 4, "requests in flight per device in the throughput phase")
	rate := fs.Float64("rate", 500, "requests/s of the first phase, open loop: a site of a few hundred terminals at its peak (0: no such phase)")
	rateFor := fs.Duration("rate-for", 5*time.Second, "how long the first phase sends (its requests are spread over it)")
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
	// Two phases, each with devices of its own (their request ids start
	// again at 1): a site's rate, open loop, then as fast as it goes.
	phases := []demoPhase{{
		name: fmt.Sprintf("a site's rate: open loop at %.0f req/s for %s, timed from the schedule", *rate, *rateFor),
		sim: devicesim.Config{Devices: *nDevices, DevicePrefix: "site", Rate: *rate,
			Requests: int(*rate * rateFor.Seconds() / float64(*nDevices)), Outstanding: 64},
	}, {
		name: fmt.Sprintf("throughput: closed loop, %d devices x %d requests, %d in flight each", *nDevices, *requests, *outstanding),
		sim:  devicesim.Config{Devices: *nDevices, DevicePrefix: "dev", Requests: *requests, Outstanding: *outstanding},
	}}
	if *rate <= 0 || phases[0].sim.Requests < 1 {
		phases = phases[1:]
	}
	passwords := map[string]string{}
	for _, ph := range phases {
		for i := range ph.sim.Devices {
			id := ph.sim.DeviceID(i + 1) // devicesim counts from 1
			if passwords[id], err = r.AddDevice(id); err != nil {
				return err
			}
		}
	}
	if err := r.Start(); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	tlsConf, err := r.DeviceTLS()
	if err != nil {
		return err
	}
	fmt.Printf("edgebridge demo: devices %s (TLS, a password each), backend %s, admin http://%s/metrics\n", r.DeviceURL(), r.Backend, r.Running.Config.Admin.Listen)
	ctx, stop := context.WithTimeout(context.Background(), *timeout)
	defer stop()
	if err := r.AwaitReady(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	var failed error
	for i := range phases {
		ph := &phases[i]
		ph.sim.Broker = r.DeviceURL()
		ph.sim.Connect = func(id string) devicesim.Conn {
			return devicesim.Conn{Username: id, Password: passwords[id], TLS: tlsConf}
		}
		total := ph.sim.Devices * ph.sim.Requests
		fmt.Printf("phase %d, %s\n", i+1, ph.name)
		ph.res, err = devicesim.Run(ctx, ph.sim, func(sent, replied int) {
			fmt.Printf("  sent %6d/%d  replied %6d/%d\n", sent, total, replied, total)
		})
		if err != nil {
			return err
		}
		if ph.res.Replied != total && failed == nil {
			failed = fmt.Errorf("demo: phase %d: %d of %d requests got no reply (first: %v)", i+1, total-ph.res.Replied, total, head(ph.res.Missing, 5))
		}
	}
	if err := r.Stop(); err != nil {
		log.Warn("demo: bridge stopped with error", "err", err)
	}

	fmt.Println("\nsummary")
	sent := 0
	for i, ph := range phases {
		res := ph.res
		sent += res.Sent
		fmt.Printf(`phase %d, %s
  sent        %d
  replied     %d (duplicate replies %d)
  approved    %d  declined %d  rejected %d  errors %d
  throughput  %.0f req/s
  latency     p50 %s  p99 %s  max %s
`, i+1, ph.name, res.Sent, res.Replied, res.Duplicates,
			res.ByStatus["APPROVED"], res.ByStatus["DECLINED"], res.ByStatus["REJECTED"], res.ByStatus["ERROR"],
			float64(res.Replied)/res.Elapsed.Seconds(),
			res.Percentile(50).Round(10*time.Microsecond), res.Percentile(99).Round(10*time.Microsecond), res.Percentile(100).Round(10*time.Microsecond))
	}
	fmt.Printf("ledger: %d of %d payments processed, each once\n", r.Ledger.Len(), sent)
	if failed != nil {
		return failed
	}
	if r.Ledger.Len() != sent {
		return fmt.Errorf("demo: the ledger holds %d payments, want %d", r.Ledger.Len(), sent)
	}
	fmt.Println("demo ok: every request got its reply")
	return nil
}

// demoPhase is one load the demo runs and what it measured.
type demoPhase struct {
	name string
	sim  devicesim.Config
	res  devicesim.Result
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }
