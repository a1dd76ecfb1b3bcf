package bridge

import (
	"context"
	"fmt"
	"time"

	"github.com/edgebridge/edgebridge/internal/diskspace"
	"github.com/edgebridge/edgebridge/internal/schedule"
)

// The data disk's high-water mark. An edge node has one small disk: when
// the embedded Kafka broker's disk runs low, intake pauses — no message is
// taken from MQTT, so none is PUBACKed and devices (through the broker)
// hold back — before a write fails half-way. Intake resumes once free
// space is back above the floor plus a margin (hysteresis), so it does not
// flap around the floor.

// diskCheckEvery is how often the data disk's free space is read.
const diskCheckEvery = time.Second

// diskState is the data disk's last reading.
type diskState struct {
	free   uint64 // bytes available to the bridge
	paused bool
}

// watchDisk reads the data disk's free space until ctx ends, pausing and
// resuming intake at the high-water mark; a state change is logged once.
func (b *Bridge) watchDisk(ctx context.Context) {
	if b.dataDisk == "" || b.cfg.Kafka.MinFreeBytes <= 0 {
		return
	}
	floor := &diskspace.Floor{Min: uint64(b.cfg.Kafka.MinFreeBytes)}
	check := func(time.Time) {
		if free, err := diskspace.Free(b.dataDisk); err == nil {
			b.noteDisk(free, floor)
		}
	}
	check(time.Now())
	schedule.Every(ctx, diskCheckEvery, check)
}

func (b *Bridge) noteDisk(free uint64, floor *diskspace.Floor) {
	paused, changed := floor.Note(free)
	switch {
	case changed && paused:
		b.log.Warn("bridge: data disk low; intake paused (devices' messages wait in the MQTT broker)",
			"dir", b.dataDisk, "free", diskspace.MiB(free), "floor", diskspace.MiB(floor.Min))
	case changed:
		b.log.Info("bridge: data disk has room again; intake resumed", "dir", b.dataDisk, "free", diskspace.MiB(free))
	}
	b.disk.Store(&diskState{free: free, paused: paused})
	b.metrics.DiskFree.Set(float64(free))
	if paused {
		b.metrics.IntakePaused.Set(1)
	} else {
		b.metrics.IntakePaused.Set(0)
	}
	select {
	case b.diskWake <- struct{}{}: // a waiting ingest checks again
	default:
	}
}

// diskPaused reports whether intake waits for disk space, and why.
func (b *Bridge) diskPaused() (bool, string) {
	d := b.disk.Load()
	if d == nil || !d.paused {
		return false, ""
	}
	return true, fmt.Sprintf("intake paused: data disk %s has %s free, below the floor of %s (kafka.min_free_bytes)",
		b.dataDisk, diskspace.MiB(d.free), diskspace.MiB(b.cfg.Kafka.MinFreeBytes))
}

// awaitDisk blocks while intake is paused for disk space; false if ctx
// ended first.
func (b *Bridge) awaitDisk(ctx context.Context) bool {
	for {
		if paused, _ := b.diskPaused(); !paused {
			return true
		}
		select {
		case <-b.diskWake:
		case <-ctx.Done():
			return false
		}
	}
}
