package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/edgebridge/edgebridge/kit/bench"
)

// benchCmd measures the pipeline against raw MQTT, Kafka and gRPC in the
// same run; see kit/bench.
func benchCmd(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var cfg bench.Config
	fs.StringVar(&cfg.MQTT, "mqtt", "mosquitto", "mosquitto (from PATH, shipped settings), embedded, or tcp://host:port")
	fs.StringVar(&cfg.Kafka, "kafka", "embedded", "embedded (its own process) or host:port[,host:port]")
	fsync := fs.Bool("fsync", true, "the embedded Kafka broker fsyncs every produced batch and paymentd its ledger, as shipped; false: page cache only (Apache Kafka's default)")
	fs.IntVar(&cfg.Devices, "devices", 50, "simulated devices at full load")
	fs.IntVar(&cfg.Outstanding, "outstanding", 4, "requests in flight per device at full load")
	fs.IntVar(&cfg.PayloadSize, "size", 1024, "request payload bytes")
	fs.DurationVar(&cfg.Duration, "duration", 0, "measured time of each full-load scenario, split over the rounds (default 15s)")
	fs.IntVar(&cfg.Rounds, "rounds", 3, "rounds alternating the pipeline and the baselines")
	fs.IntVar(&cfg.ClosedLoop, "closed-loop", 20, "devices, one request outstanding each, of the closed-loop latency scenario (on 2 cores it saturates the CPU: queueing)")
	fs.IntVar(&cfg.Curve, "curve", 5, "open-loop steps for the latency-vs-load plot (-1: none)")
	fs.Float64Var(&cfg.Rate, "rate", bench.SiteRate, "requests/s of the open-loop scenario every run has: a site's rate (-1: none)")
	fs.BoolVar(&cfg.TLS, "tls", false, "also run the pipeline with TLS on MQTT (devices and bridge) and Kafka, interleaved in the same rounds")
	fs.StringVar(&cfg.Tracing, "tracing", "", "an OTLP/gRPC collector host:port, or local (a receiver in the bench that counts spans): also run the pipeline traced at sample ratios 1 and 0.01, interleaved in the same rounds")
	fs.DurationVar(&cfg.Idle, "idle", 10*time.Second, "after 5 timed fresh starts of the node as shipped (edgebridge run, brokers in-process), read its footprint after this long idle (-1s: skip)")
	jsonPath := fs.String("json", "", "write the report as JSON to this file")
	plotPath := fs.String("plot", "", "write the latency-vs-load plot as SVG to this file")
	fs.StringVar(&cfg.ProfileDir, "profile", "", "write the bridge's CPU and allocation profiles (over the scenario alone) and execution trace of the first pipeline round (cpu.pprof, allocs.pprof, trace.out), the same of the node as shipped (shipped-*), the traced stacks (traced-1-*, traced-0.01-*) and the site-rate scenarios (rate-*, shipped-rate-*) to this directory")
	quiet := fs.Bool("q", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.NoFsync = !*fsync
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.Bridge = exe
	if !*quiet {
		cfg.Log = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if err := rep.WriteTable(os.Stdout); err != nil {
		return err
	}
	if *jsonPath != "" {
		if err := rep.WriteJSON(*jsonPath); err != nil {
			return err
		}
	}
	if *plotPath != "" {
		f, err := os.Create(*plotPath)
		if err != nil {
			return err
		}
		if err := rep.WritePlot(f); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if rep.Lost > 0 {
		return fmt.Errorf("bench: %d messages lost", rep.Lost)
	}
	return nil
}
