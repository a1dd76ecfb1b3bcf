package integration

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/disktest"
	"github.com/edgebridge/edgebridge/kit/proc"
)

// TestFullDisk: the Kafka data on a small filesystem, the backend
// stopped. The backlog grows until the high-water mark stops the writes
// before the disk is full: the bridge stops PUBACKing and /readyz says
// which disk. Starting the backend drains the backlog; the broker deletes
// what was committed, so disk use falls and intake resumes by itself.
// Every request is answered and processed exactly once. Then a kill -9 of
// the broker loses no commit: nothing already processed is delivered
// again. Both ways the broker runs:
//
//   - kafka process: `edgebridge broker kafka`, whose own mark refuses
//     produces (KAFKA_STORAGE_ERROR); the kill -9 is the broker's.
//   - kafka in-process: the bridge's mark (kafka.min_free_bytes) pauses
//     intake; the kill -9 is the bridge's, which runs the broker.
func TestFullDisk(t *testing.T) {
	t.Run("kafka process", func(t *testing.T) { fullDisk(t, false) })
	t.Run("kafka in-process", func(t *testing.T) { fullDisk(t, true) })
}

func fullDisk(t *testing.T, inProcess bool) {
	const (
		floor  = 1 << 20 // intake resumes at 2 MiB free
		budget = 4 << 20 // free space above the floor the backlog may fill
		group  = "edgebridge"
		topic  = "edgebridge.payment.requests"
	)
	disk := disktest.Mount(t, "16m")
	kafkaAddr := freeAddr(t)
	mqtt := mosquitto(t)
	payAddr, ledger := freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl")
	pay := startPaymentd(t, payAddr, ledger)

	var broker *proc.Process
	var restartBroker func() // kill -9 and start again
	opts := bridgeOpts{mqtt: mqtt, kafka: kafkaAddr, backend: payAddr, kafkaExtra: "  partitions: 2\n"}
	paused := "no space on the broker's disk"
	if inProcess {
		opts.kafka = "embedded"
		opts.kafkaExtra += fmt.Sprintf("  embedded_listen: %s\n  data_dir: %s\n  min_free_bytes: %d\n  delete_committed_after: 1s\n", kafkaAddr, disk, floor)
		paused = "intake paused: data disk " + disk
	} else {
		flags := []string{"-partitions", "2", "-min-free-bytes", strconv.Itoa(floor), "-delete-committed-after", "1s"}
		broker = startBroker(t, "kafka", kafkaAddr, disk, flags...)
		restartBroker = func() {
			broker.Kill()
			broker = startBroker(t, "kafka", kafkaAddr, disk, flags...)
		}
	}
	cfgPath, admin := writeBridgeConfig(t, opts)
	br := startBridge(t, cfgPath, admin)
	if inProcess {
		restartBroker = func() {
			br.Kill()
			br = &bridgeProc{&proc.Bridge{Process: start(t, bins.edgebridge, "run", "-config", cfgPath), Admin: admin}}
			waitFor(t, time.Minute, "the embedded broker listening", func() bool { return dialable(kafkaAddr) })
		}
	}
	if err := pay.Stop(20 * time.Second); err != nil {
		t.Fatalf("paymentd exit: %v", err)
	}
	// The ballast stays: the space must come back from the backlog itself.
	disktest.Fill(t, disk, floor+budget)

	// 15,000 requests (about 400 bytes each on disk) do not fit in the budget.
	ctx := withTimeout(t, 5*time.Minute)
	devs := devicesim.Config{Broker: mqtt, Devices: 20, Requests: 750, Outstanding: 750, Counters: new(devicesim.Counters)}
	done := runDevices(ctx, devs)

	start := time.Now()
	waitFor(t, 2*time.Minute, "the writes to stop at the high-water mark", func() bool {
		code, body := br.Readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, paused)
	})
	pausedFree := disktest.Free(t, disk)
	produced, _ := br.Metric("edgebridge_kafka_records_produced_total")
	total := devs.Devices * devs.Requests
	t.Logf("paused %s after the devices started: %d of %d requests in Kafka, %d KiB free (floor %d KiB)",
		time.Since(start).Round(time.Millisecond), int(produced), total, pausedFree>>10, floor>>10)
	// The bridge reads the disk every second; the broker refuses writes
	// below half the floor: at most a batch gets past that.
	if pausedFree < floor/4 {
		t.Fatalf("%d bytes free at the pause: writes went far past the floor", pausedFree)
	}
	if int(produced) >= total {
		t.Fatalf("all %d requests written before the pause: the test proves nothing", total)
	}
	if inProcess {
		if v, err := br.Metric("edgebridge_intake_paused"); err != nil || v != 1 {
			t.Errorf("edgebridge_intake_paused = %v (%v), want 1", v, err)
		}
	} else if v, err := br.Metric(`edgebridge_broker_problem{broker="kafka",reason="no_space"}`); err != nil || v != 1 {
		t.Errorf(`edgebridge_broker_problem{broker="kafka",reason="no_space"} = %v (%v), want 1`, v, err)
	}

	backendStart := time.Now()
	pay = startPaymentd(t, payAddr, ledger)
	waitFor(t, time.Minute, "intake to resume", br.Ready)
	resumed := time.Since(backendStart)
	res := <-done
	checkDevices(t, res, devs)
	t.Logf("backend started: intake resumed after %s, all %d answered after %s", resumed.Round(time.Millisecond),
		total, time.Since(backendStart).Round(time.Millisecond))
	// Each partition keeps the segment (1 MiB at most) holding its last
	// record; the rest of the backlog's space comes back.
	waitFor(t, time.Minute, "disk use to fall as committed records are deleted", func() bool {
		return disktest.Free(t, disk) > pausedFree+budget/4
	})
	waitFor(t, 30*time.Second, "the bridge ready again", br.Ready)
	t.Logf("free space: %d KiB at the pause, %d KiB after the drain", pausedFree>>10, disktest.Free(t, disk)>>10)

	// kill -9 of the broker once every record is committed: the commits
	// survive it, and nothing is delivered again.
	waitFor(t, 30*time.Second, "every request committed", func() bool {
		committed, end := offsets(t, kafkaAddr, group, topic, 2)
		return committed == end
	})
	before, _ := offsets(t, kafkaAddr, group, topic, 2)
	replies, _ := br.Metric("edgebridge_mqtt_replies_published_total")
	generations := strings.Count(br.Output(), "kafkapipe: generation started")
	restartBroker()
	if after, end := offsets(t, kafkaAddr, group, topic, 2); after != before || after != end {
		t.Fatalf("after kill -9 of the broker: committed %v, log end %v; want both %v", after, end, before)
	}
	if inProcess { // a new bridge process: its counters start again
		replies, generations = 0, 0
	}
	// A new round once the bridge's consumer is in the restarted broker's
	// group: on each partition anything redelivered would come before it,
	// so the replies count exactly the new requests.
	waitFor(t, time.Minute, "the bridge to rejoin the group", func() bool {
		return strings.Count(br.Output(), "kafkapipe: generation started") > generations
	})
	waitFor(t, time.Minute, "the bridge ready after the broker restart", br.Ready)
	more := devicesim.Config{Broker: mqtt, Devices: 2, Requests: 10, Outstanding: 1, DevicePrefix: "late", Counters: new(devicesim.Counters)}
	checkDevices(t, <-runDevices(ctx, more), more)
	waitFor(t, 30*time.Second, "the new round committed", func() bool {
		committed, end := offsets(t, kafkaAddr, group, topic, 2)
		return committed == end
	})
	if got, _ := br.Metric("edgebridge_mqtt_replies_published_total"); got-replies != 20 {
		t.Fatalf("%v replies after the broker's kill -9 and 20 new requests, want 20 (no redelivery)", got-replies)
	}
	if err := br.Stop(30 * time.Second); err != nil {
		t.Fatalf("bridge exit: %v", err)
	}
	checkLedger(t, ledger, devs, more)
}

// partOffsets are a group's committed offsets, or a topic's log end
// offsets, by partition.
type partOffsets [2]int64

// offsets returns group's committed offsets on topic's partitions (at most
// 2) and the partitions' log end offsets.
func offsets(t *testing.T, addr, group, topic string, parts int32) (committed, end partOffsets) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fetch := kmsg.NewPtrOffsetFetchRequest()
	fetch.Group = group
	ft := kmsg.NewOffsetFetchRequestTopic()
	ft.Topic = topic
	list := kmsg.NewPtrListOffsetsRequest()
	lt := kmsg.NewListOffsetsRequestTopic()
	lt.Topic = topic
	for p := range parts {
		ft.Partitions = append(ft.Partitions, p)
		lp := kmsg.NewListOffsetsRequestTopicPartition()
		lp.Partition, lp.Timestamp = p, -1 // latest
		lt.Partitions = append(lt.Partitions, lp)
	}
	fetch.Topics = append(fetch.Topics, ft)
	list.Topics = append(list.Topics, lt)
	fr, err := fetch.RequestWith(ctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(fr.ErrorCode)
	}
	if err != nil {
		t.Fatalf("fetch %s's offsets: %v", group, err)
	}
	for _, rt := range fr.Topics {
		for _, rp := range rt.Partitions {
			committed[rp.Partition] = rp.Offset
		}
	}
	lr, err := list.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("list %s's offsets: %v", topic, err)
	}
	for _, rt := range lr.Topics {
		for _, rp := range rt.Partitions {
			if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
				t.Fatalf("list %s[%d]: %v", topic, rp.Partition, err)
			}
			end[rp.Partition] = rp.Offset
		}
	}
	return committed, end
}
