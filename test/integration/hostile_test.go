package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/segmentio/kafka-go"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/proc"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/payment"
	"github.com/edgebridge/edgebridge/transcoder"
)

// maxBridgeRSS is the most resident memory a bridge built without -race may
// reach while it handles a 2 MB payload among normal traffic.
const maxBridgeRSS = 96 << 20

// TestHostileDevices mixes every kind of bad device input into 10 devices
// x 20 normal requests, through the shipped Mosquitto config, the bridge
// (built without -race, so its memory is what a site sees) and paymentd,
// and SIGKILLs and restarts the bridge in the middle:
//
//   - a 2 MB payload: REJECTED, a 4 KiB stub in the DLQ, never read whole;
//   - a device id of 65,519 bytes (a 65,535-byte topic): its reply topic
//     would be too long, so it is dead-lettered and gets no reply, and
//     nothing is ever published to a cut or broken topic;
//   - a request id reused for 5,000,000 USD: REJECTED with code conflict,
//     never processed;
//   - request ids with invalid UTF-8 and with unpaired surrogate escapes:
//     REJECTED invalid_utf8 each (they no longer collide);
//   - an empty payload: dead-lettered, no reply;
//   - a retained request published before the bridge first subscribed:
//     dead-lettered once, never processed; one published while the bridge
//     runs: processed once, its retained replay dead-lettered once.
//
// Every normal request is answered and processed once, and the bridge
// stays subscribed and ready throughout, apart from its restart.
func TestHostileDevices(t *testing.T) {
	mq := startMosquitto(t)
	kafkaAddr := kafkaBroker(t)
	payMetrics := freeAddr(t)
	pay := startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"), "-metrics", payMetrics)
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: mq.url(), kafka: kafkaAddr, backend: pay.addr})
	ctx := withTimeout(t, 4*time.Minute)

	spy := newSpy(t, mq.url())
	// Retained before the bridge's first subscribe: a replay of nothing.
	ret1 := newDevice(t, mq.url(), "ret-1", "ret-1")
	ret1.publish(t, []byte(`{"request_id":"r-ret-1","amount_minor":100,"currency":"EUR"}`), true)

	b := startBridgeBin(t, bins.edgebridgeNoRace, cfgPath, admin)
	ready := watchReady(t, admin)
	cfg := devicesim.Config{Broker: mq.url(), Devices: 10, Requests: 20, Outstanding: 2, Counters: new(devicesim.Counters)}
	done := runDevices(ctx, cfg)

	// A retained request while the bridge runs: delivered live, processed.
	ret2 := newDevice(t, mq.url(), "ret-2", "ret-2")
	ret2.publish(t, []byte(`{"request_id":"r-ret-2","amount_minor":100,"currency":"EUR"}`), true)
	ret2.await(t, "r-ret-2", transcoder.StatusApproved)

	big := newDevice(t, mq.url(), "big-1", "big-1")
	bigPayload := []byte(`{"request_id":"r-big","amount_minor":100,"currency":"EUR","memo":"` + strings.Repeat("m", 2<<20) + `"}`)
	sent := time.Now()
	big.publish(t, bigPayload, false)
	if r := big.await(t, "", transcoder.StatusRejected); r.Code != "invalid_request" || !strings.HasPrefix(r.Reason, "payload_too_large") {
		t.Errorf("2 MB payload: got %+v, want REJECTED invalid_request payload_too_large", r)
	}
	t.Logf("2 MB payload: dead-lettered and answered REJECTED %s after its publish", time.Since(sent).Round(time.Millisecond))

	reuse := newDevice(t, mq.url(), "reuse-1", "reuse-1")
	reuse.publish(t, []byte(`{"request_id":"r-1","amount_minor":100,"currency":"USD","merchant_id":"m-1"}`), false)
	reuse.await(t, "r-1", transcoder.StatusApproved)
	reuse.publish(t, []byte(`{"request_id":"r-1","amount_minor":500000000,"currency":"USD","merchant_id":"m-1"}`), false)
	if r := reuse.await(t, "r-1", transcoder.StatusRejected); r.Code != "conflict" {
		t.Errorf("reused request id: got %+v, want REJECTED with code conflict", r)
	}

	longID := strings.Repeat("L", v1.MaxTopicLen-len("payment/request/"))
	long := newDevice(t, mq.url(), "long-1", longID)
	long.publish(t, []byte(`{"request_id":"r-long","amount_minor":100,"currency":"EUR"}`), false)

	utf := newDevice(t, mq.url(), "utf-1", "utf-1")
	for _, id := range []string{"r-\xff", "r-\xfe", `r-\ud800`, `r-\udbff`} {
		utf.publish(t, []byte(`{"request_id":"`+id+`","amount_minor":100,"currency":"EUR"}`), false)
	}
	utf.publish(t, nil, false)
	for range 4 {
		if r := utf.await(t, "", transcoder.StatusRejected); !strings.HasPrefix(r.Reason, "invalid_utf8") {
			t.Errorf("invalid UTF-8 request id: got %+v, want REJECTED invalid_utf8", r)
		}
	}

	// Every hostile input is in the DLQ before the kill, so the first
	// bridge is the one that handled the 2 MB payload.
	waitFor(t, time.Minute, "the hostile inputs dead-lettered", func() bool {
		reasons := dlqReasons(t, kafkaAddr)
		return reasons["ret-1/retained"] == 1 && reasons["big-1/payload_too_large"] >= 1 && reasons["reuse-1/conflict"] >= 1 &&
			reasons[longID[:1024]+"/invalid_device_id"] >= 1 && reasons["utf-1/invalid_utf8"] >= 4 && reasons["utf-1/empty_payload"] >= 1
	})
	if rss := peakRSS(t, b.Process); rss > maxBridgeRSS {
		t.Errorf("bridge peak RSS %d MB with a 2 MB payload, want under %d MB", rss>>20, maxBridgeRSS>>20)
	} else {
		t.Logf("bridge peak RSS with the 2 MB payload: %.1f MB", float64(rss)/(1<<20))
	}

	waitFor(t, time.Minute, "half of the normal replies", func() bool { return cfg.Counters.Replied.Load() >= 100 })
	ready.pause()
	b.Kill()
	b = startBridgeBin(t, bins.edgebridgeNoRace, cfgPath, admin)
	ready.resume()

	checkDevices(t, <-done, cfg)
	// The restarted bridge resubscribed: ret-2's retained copy is replayed
	// and dead-lettered once; ret-1's was cleared and is not.
	waitFor(t, time.Minute, "ret-2's retained replay dead-lettered", func() bool { return dlqReasons(t, kafkaAddr)["ret-2/retained"] >= 1 })
	ready.stop()
	if err := b.Stop(30 * time.Second); err != nil {
		t.Fatalf("bridge exit: %v", err)
	}
	reasons := dlqReasons(t, kafkaAddr)
	for _, k := range []string{"ret-1/retained", "ret-2/retained"} {
		if reasons[k] != 1 {
			t.Errorf("DLQ %s: got %d records, want exactly 1 (dead-lettered once, then cleared)", k, reasons[k])
		}
	}
	checkStub(t, kafkaAddr, "big-1", len(bigPayload))

	entries, err := payment.ReadLedger(pay.ledger)
	if err != nil {
		t.Fatal(err)
	}
	a := devicesim.AuditLedger(entries)
	if a.Twice != 0 {
		t.Errorf("got %d messages processed twice, want 0", a.Twice)
	}
	extra := map[string]int64{}
	normal := 0
	for _, e := range entries {
		if strings.HasPrefix(e.DeviceID, "dev-") {
			normal++
		} else {
			extra[e.DeviceID+"/"+e.RequestID] = e.AmountMinor
		}
	}
	if want := map[string]int64{"reuse-1/r-1": 100, "ret-2/r-ret-2": 100}; !maps.Equal(extra, want) {
		t.Errorf("ledger outside the normal devices: got %v, want %v (nothing of the hostile inputs processed)", extra, want)
	}
	if normal != 200 {
		t.Errorf("got %d normal requests in the ledger, want 200, each once", normal)
	}

	for _, topic := range spy.topics() {
		if err := mqttin.ValidTopic(topic); err != nil {
			t.Errorf("something published to %.60q: %v", topic, err)
		}
		if strings.HasPrefix(topic, "payment/response/L") {
			t.Errorf("a reply went to %.60q… (%d bytes): the long device id's cut reply topic", topic, len(topic))
		}
	}
	if out := mq.p.Output(); strings.Contains(out, "malformed") || strings.Contains(out, "exceeded") {
		t.Errorf("mosquitto refused a packet:\n%s", tail(out, 2000))
	}
	if why := ready.failures(); len(why) > 0 {
		t.Errorf("bridge not ready outside its restart: %v", why)
	}
}

// device is one MQTT client publishing as deviceID and reading its replies.
type device struct {
	c       paho.Client
	topic   string
	replies chan transcoder.Reply
}

func newDevice(t *testing.T, broker, clientID, deviceID string) *device {
	t.Helper()
	d := &device{topic: "payment/request/" + deviceID, replies: make(chan transcoder.Reply, 16)}
	d.c = paho.NewClient(paho.NewClientOptions().AddBroker(broker).SetClientID(clientID).SetCleanSession(true))
	if tok := d.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device %s connect: %v", clientID, tok.Error())
	}
	t.Cleanup(func() { d.c.Disconnect(0) })
	reply := "payment/response/" + deviceID
	if mqttin.ValidTopic(reply) == nil {
		tok := d.c.Subscribe(reply, 1, func(_ paho.Client, m paho.Message) {
			var r transcoder.Reply
			if json.Unmarshal(m.Payload(), &r) == nil {
				d.replies <- r
			}
		})
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("device %s subscribe: %v", clientID, tok.Error())
		}
	}
	return d
}

// publish sends payload with QoS 1 and waits for the broker's PUBACK.
func (d *device) publish(t *testing.T, payload []byte, retained bool) {
	t.Helper()
	if tok := d.c.Publish(d.topic, 1, retained, payload); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("publish to %.40s: %v", d.topic, tok.Error())
	}
}

// await returns the next reply for requestID ("" matches any) with status.
func (d *device) await(t *testing.T, requestID, status string) transcoder.Reply {
	t.Helper()
	timer := time.NewTimer(time.Minute)
	defer timer.Stop()
	for {
		select {
		case r := <-d.replies:
			if (requestID == "" || r.RequestID == requestID) && r.Status == status {
				return r
			}
		case <-timer.C:
			t.Fatalf("no %s reply for %q on %.40s", status, requestID, d.topic)
		}
	}
}

// spy records the topic of every message Mosquitto routes.
type spy struct {
	mu  sync.Mutex
	set map[string]bool
}

func newSpy(t *testing.T, broker string) *spy {
	t.Helper()
	s := &spy{set: map[string]bool{}}
	c := paho.NewClient(paho.NewClientOptions().AddBroker(broker).SetClientID("spy").SetOrderMatters(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	tok := c.Subscribe("#", 0, func(_ paho.Client, m paho.Message) {
		s.mu.Lock()
		s.set[m.Topic()] = true
		s.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	return s
}

func (s *spy) topics() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.set))
	for k := range s.set {
		out = append(out, k)
	}
	return out
}

// readiness polls /readyz and keeps what it saw while not paused.
type readiness struct {
	paused atomic.Bool
	mu     sync.Mutex
	why    []string
	cancel context.CancelFunc
	done   chan struct{}
}

func watchReady(t *testing.T, admin string) *readiness {
	ctx, cancel := context.WithCancel(context.Background())
	r := &readiness{cancel: cancel, done: make(chan struct{})}
	t.Cleanup(r.stop)
	client := &http.Client{Timeout: 2 * time.Second}
	go func() {
		defer close(r.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if r.paused.Load() {
				continue
			}
			resp, err := client.Get("http://" + admin + "/readyz")
			why := ""
			if err != nil {
				why = err.Error()
			} else {
				var body bytes.Buffer
				_, _ = body.ReadFrom(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					why = strings.TrimSpace(body.String())
				}
			}
			if why != "" && !r.paused.Load() {
				r.mu.Lock()
				r.why = append(r.why, why)
				r.mu.Unlock()
			}
		}
	}()
	return r
}

func (r *readiness) pause() { r.paused.Store(true) }

// resume watches again; the bridge was just seen ready.
func (r *readiness) resume() { r.paused.Store(false) }

func (r *readiness) stop() {
	r.cancel()
	<-r.done
}

func (r *readiness) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.why
}

// peakRSS is the process's peak resident memory (VmHWM), in bytes.
func peakRSS(t *testing.T, p *proc.Process) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}

// dlqRecords reads the DLQ topic to its end.
func dlqRecords(t *testing.T, broker string) []kafka.Message {
	t.Helper()
	return topicRecords(t, broker, "edgebridge.payment.dlq")
}

// topicRecords reads every record of the bridge's 8-partition topic.
func topicRecords(t *testing.T, broker, topic string) []kafka.Message {
	t.Helper()
	var out []kafka.Message
	for p := range 8 {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p,
			MaxWait: 50 * time.Millisecond, MaxBytes: 8 << 20})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		for {
			lag, err := r.ReadLag(ctx)
			if err != nil {
				t.Fatalf("%s partition %d: %v", topic, p, err)
			}
			if lag == 0 {
				break
			}
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("%s partition %d: %v", topic, p, err)
			}
			out = append(out, m)
		}
		cancel()
		r.Close()
	}
	return out
}

// dlqReasons counts DLQ records by "<device id header>/<reason>".
func dlqReasons(t *testing.T, broker string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range dlqRecords(t, broker) {
		out[header(m, "edgebridge-device-id")+"/"+header(m, "edgebridge-dlq-reason")]++
	}
	return out
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// checkStub asserts the device's oversized payload is in the DLQ as its
// first 4 KiB with its original size and SHA-256.
func checkStub(t *testing.T, broker, device string, size int) {
	t.Helper()
	for _, m := range dlqRecords(t, broker) {
		if header(m, "edgebridge-device-id") != device {
			continue
		}
		if len(m.Value) != 4096 || header(m, "edgebridge-original-size") != strconv.Itoa(size) ||
			len(header(m, "edgebridge-original-sha256")) != 64 || header(m, "edgebridge-truncated") != "true" {
			t.Errorf("DLQ stub of %s: %d bytes, headers %v; want 4096 bytes, original size %d, its SHA-256, truncated", device, len(m.Value), m.Headers, size)
		}
		return
	}
	t.Errorf("no DLQ record for %s", device)
}
