package bridge_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/bridge"
	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/disktest"
	"github.com/edgebridge/edgebridge/kit/rig"
)

// The data disk's high-water mark: with the embedded Kafka's data on a
// small filesystem nearly full, the backlog of requests brings it below
// kafka.min_free_bytes and intake pauses before the disk is full —
// /readyz names the disk, nothing more is taken from MQTT; once space is
// back, intake resumes and every request is processed exactly once.
func TestDiskHighWaterMark(t *testing.T) {
	leakCheck(t)
	disk := disktest.Mount(t, "32m")
	var mu sync.Mutex
	calls := map[string]int{}
	p := rig.Test(t, rig.KafkaDir(disk), rig.Handler(func(_ context.Context, env *v1.Envelope) backend.Result {
		mu.Lock()
		calls[env.MessageId]++
		mu.Unlock()
		return approve(env)
	}))
	const floor = 8 << 20
	p.Config.Kafka.MinFreeBytes = floor
	b := p.StartTest(t, bridge.WithDataDisk(disk))

	// Ballast leaves a little more than the floor: the requests' records
	// use up the rest.
	ballast := disktest.Fill(t, disk, floor+(192<<10))
	// More requests than an idle machine answers in the second between
	// two readings of the disk, so some wait for the space.
	devs := devicesim.Config{Broker: p.DeviceURL(), Devices: 5, Requests: 2000, Outstanding: 20, Counters: new(devicesim.Counters)}
	dctx, stopDevices := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stopDevices()
	done := make(chan devicesim.Result, 1)
	go func() { res, _ := devicesim.Run(dctx, devs, nil); done <- res }()

	waitUntil(t, "intake to pause at the high-water mark", func() bool {
		ok, why := b.Ready()
		return !ok && len(why) > 0 && strings.Contains(strings.Join(why, ";"), "intake paused: data disk "+disk)
	})
	if got := disktest.Free(t, disk); got <= 0 || got > floor {
		t.Fatalf("paused with %d bytes free, want some, below the floor %d", got, floor)
	}
	held := devs.Counters.Replied.Load()
	if total := int64(devs.Devices * devs.Requests); held >= total {
		t.Fatalf("all %d requests answered before the pause: the test proves nothing", total)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.Replied != devs.Devices*devs.Requests || len(res.Missing) > 0 {
		t.Fatalf("after space came back: %d replies, want %d; missing %v", res.Replied, devs.Devices*devs.Requests, res.Missing[:min(5, len(res.Missing))])
	}
	waitUntil(t, "the bridge ready again", func() bool { ok, _ := b.Ready(); return ok })
	mu.Lock()
	defer mu.Unlock()
	for id, n := range calls {
		if n != 1 {
			t.Fatalf("message %s processed %d times, want once", id, n)
		}
	}
	if len(calls) != devs.Devices*devs.Requests {
		t.Fatalf("got %d messages processed, want %d", len(calls), devs.Devices*devs.Requests)
	}
	t.Logf("paused with %d requests answered of %d; all answered after space came back", held, devs.Devices*devs.Requests)
}
