package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/edgebridge/edgebridge/kit/proc"
)

// Footprint is what the node as shipped (`edgebridge run`, both brokers
// in-process, its default settings) costs before a message arrives.
type Footprint struct {
	// BinaryBytes is the size of the binary measured.
	BinaryBytes int64 `json:"binary_bytes"`
	// ReadyMillis is exec to /readyz 200 with an empty data directory and
	// the backend listening, the median of ReadyRuns starts.
	ReadyMillis float64   `json:"ready_ms"`
	ReadyRuns   []float64 `json:"ready_runs_ms"`
	// Idle figures, over IdleFor after ready.
	IdleRSSBytes int64 `json:"idle_rss_bytes"`
	// IdleAnonBytes is the part of the RSS that is not the binary's pages
	// (clean, in the page cache, shared by every process running it).
	IdleAnonBytes  int64   `json:"idle_anon_bytes"`
	IdleGoroutines int     `json:"idle_goroutines"`
	IdleCPUPercent float64 `json:"idle_cpu_percent_of_a_core"`
	IdleFor        string  `json:"idle_for"`
}

// footprintStarts is how many fresh starts the ready time is the median of.
const footprintStarts = 5

// measureFootprint starts the node as shipped footprintStarts times on
// fresh data directories, pointed at paymentd at backend; the last start
// stays up for idle and is then measured.
func measureFootprint(ctx context.Context, bin, dir, backend string, idle time.Duration) (Footprint, error) {
	var f Footprint
	st, err := os.Stat(bin)
	if err != nil {
		return f, err
	}
	f.BinaryBytes = st.Size()
	for i := range footprintStarts {
		last := i == footprintStarts-1
		ms, err := timeToReady(ctx, bin, filepath.Join(dir, fmt.Sprintf("start%d", i)), backend, func(b *proc.Bridge) error {
			if !last {
				return nil
			}
			return f.idle(ctx, b, idle)
		})
		if err != nil {
			return f, err
		}
		f.ReadyRuns = append(f.ReadyRuns, ms)
	}
	s := slices.Clone(f.ReadyRuns)
	slices.Sort(s)
	f.ReadyMillis = s[len(s)/2]
	return f, nil
}

// idle waits d with b idle and records its RSS, goroutines and CPU.
func (f *Footprint) idle(ctx context.Context, b *proc.Bridge, d time.Duration) error {
	before, err := readProcStat(b.PID())
	if err != nil {
		return err
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return ctx.Err()
	}
	after, err := readProcStat(b.PID())
	if err != nil {
		return err
	}
	n, err := b.Metric("go_goroutines")
	if err != nil {
		return err
	}
	f.IdleRSSBytes, f.IdleAnonBytes, f.IdleGoroutines, f.IdleFor = after.RSS, after.Anon, int(n), d.String()
	f.IdleCPUPercent = 100 * float64(after.CPU-before.CPU) / float64(d)
	return nil
}

// shippedNode is `edgebridge run` with the shipped settings but its own
// ports and data directory: both brokers in-process, devices on the
// embedded MQTT broker's loopback listener.
type shippedNode struct {
	*proc.Bridge
	MQTT string // the embedded MQTT broker's host:port
}

// startShipped starts a shipped node pointed at paymentd at backend; it
// returns when the process runs, not when it is ready.
func startShipped(bin, dir, backend string, pprof bool) (*shippedNode, error) {
	addrs, err := proc.FreeAddrs(3)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "edgebridge.yaml")
	yaml := fmt.Sprintf("mqtt:\n  embedded_listen: %s\nkafka:\n  embedded_listen: %s\n  data_dir: %s\nbackend:\n  targets: [%q]\nadmin:\n  listen: %s\n  pprof: %t\n",
		addrs[0], addrs[1], filepath.Join(dir, "data"), backend, addrs[2], pprof)
	if err := os.WriteFile(conf, []byte(yaml), 0o644); err != nil {
		return nil, err
	}
	p, err := proc.Start(nil, bin, "run", "-config", conf)
	if err != nil {
		return nil, err
	}
	p.Name = "edgebridge run (as shipped)"
	return &shippedNode{Bridge: &proc.Bridge{Process: p, Admin: addrs[2]}, MQTT: addrs[0]}, nil
}

// timeToReady starts a shipped node, returns the milliseconds from exec
// to /readyz 200 and, before stopping it, runs with.
func timeToReady(ctx context.Context, bin, dir, backend string, with func(*proc.Bridge) error) (float64, error) {
	start := time.Now()
	n, err := startShipped(bin, dir, backend, false)
	if err != nil {
		return 0, err
	}
	b := n.Bridge
	defer func() { _ = b.Stop(30 * time.Second) }()
	// Polled every millisecond: the figure's resolution.
	deadline := time.Now().Add(30 * time.Second)
	for !b.Ready() {
		if err := b.Exited(); err != nil {
			return 0, fmt.Errorf("bench: the shipped node exited: %w\n%s", err, proc.Tail(b.Output(), 3000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("bench: the shipped node not ready in 30s\n%s", proc.Tail(b.Output(), 3000))
		}
		time.Sleep(time.Millisecond)
	}
	ms := math.Round(float64(time.Since(start))/float64(time.Millisecond)*10) / 10
	return ms, with(b)
}
