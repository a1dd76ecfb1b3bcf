package bridge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/bridge"
)

// The operating metrics: MQTT connection state, produce latency, end-to-end
// latency per answered request, and the consumer lag per partition, which
// grows while the backend holds requests and drains after.
func TestOperatingMetrics(t *testing.T) {
	leakCheck(t)
	release := make(chan struct{})
	p := newPipeline(t, approveWhen(release))
	b := p.StartTest(t)
	if got := metric(t, b, "edgebridge_mqtt_connected"); got != 1 {
		t.Fatalf("got edgebridge_mqtt_connected %v, want 1", got)
	}
	const n = 6
	replies := make(chan []byte, n)
	dev := device(t, p, "dev-1", replies)
	for i := range n {
		dev.Publish("payment/request/dev-1", 1, false, fmt.Sprintf(`{"request_id":"r-%d","amount_minor":100,"currency":"EUR"}`, i)).Wait()
	}
	lag := func() float64 {
		sum := 0.0
		for part := range 2 {
			sum += metric(t, b, "edgebridge_kafka_consumer_lag", "partition", fmt.Sprint(part))
		}
		return sum
	}
	waitUntil(t, "a lag of every request the backend holds", func() bool { return lag() == n })
	// The oldest held request ages while the backend holds it.
	const age = "edgebridge_oldest_unprocessed_request_age_seconds"
	first := metric(t, b, age)
	waitUntil(t, "the oldest request's age to grow", func() bool { return metric(t, b, age) > first && first > 0 })
	close(release)
	awaitReplies(t, replies, n)
	waitUntil(t, "the lag to drain", func() bool { return lag() == 0 })
	waitUntil(t, "no request waiting", func() bool { return metric(t, b, age) == 0 })
	if got := metric(t, b, "edgebridge_end_to_end_latency_seconds"); got != n {
		t.Fatalf("got %v end-to-end latencies, want %d", got, n)
	}
	if got := metric(t, b, "edgebridge_kafka_produce_latency_seconds"); got < 1 {
		t.Fatalf("got %v produce latencies, want at least 1", got)
	}
}

// Status (and GET /status) shows the brokers, the backend stream with its
// credits and in-flight deliveries, the window, the lag and the counters;
// a backend that goes away shows as down with its reason, in the recent
// errors, and makes the bridge unready.
func TestStatus(t *testing.T) {
	leakCheck(t)
	release := make(chan struct{})
	p := newPipeline(t, approveWhen(release))
	b := p.StartTest(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stopAdmin := context.WithCancel(context.Background())
	adminDone := make(chan error, 1)
	go func() { adminDone <- b.ServeAdmin(ctx, ln) }()
	t.Cleanup(func() { stopAdmin(); <-adminDone })

	const n = 3
	replies := make(chan []byte, n)
	dev := device(t, p, "dev-1", replies)
	for i := range n {
		dev.Publish("payment/request/dev-1", 1, false, fmt.Sprintf(`{"request_id":"r-%d","amount_minor":100,"currency":"EUR"}`, i)).Wait()
	}
	lagSum := func(s bridge.Status) (sum int64) {
		for _, v := range s.Lag {
			sum += v
		}
		return sum
	}
	waitUntil(t, "the status to show the held requests", func() bool {
		s := b.Status()
		return s.Window.InFlight == n && lagSum(s) == n && len(s.Backends) == 1 && s.Backends[0].InFlight == n
	})
	s := getStatus(t, "http://"+ln.Addr().String()+"/status")
	be := s.Backends[0]
	switch {
	case !s.Ready || !s.MQTT.Connected || !s.Kafka.Connected:
		t.Errorf("got ready %v mqtt %+v kafka %+v, want all up", s.Ready, s.MQTT, s.Kafka)
	case !be.Up || be.UpSince == nil || be.Credits != p.Config.Backend.Window || be.InFlight != n || be.Partitions != 1 || be.Addr != p.Config.Backend.Targets[0]:
		t.Errorf("got backend %+v, want up with %d credits, %d in flight, 1 partition (one device)", be, p.Config.Backend.Window, n)
	case s.Window != (bridge.Window{Capacity: p.Config.Backend.Window, InFlight: n}):
		t.Errorf("got window %+v, want capacity %d, %d in flight", s.Window, p.Config.Backend.Window, n)
	case lagSum(s) != n || len(s.Lag) != 2:
		t.Errorf("got lag %v, want %d over 2 partitions", s.Lag, n)
	case s.Counters.Received != n || s.Counters.Produced != n:
		t.Errorf("got counters %+v, want %d received and produced", s.Counters, n)
	case strings.Contains(s.MQTT.Address, "@"):
		t.Errorf("got MQTT address %q: credentials must not show", s.MQTT.Address)
	}
	close(release)
	awaitReplies(t, replies, n)

	p.StopBackend()
	waitUntil(t, "the status to show the backend down", func() bool {
		s := b.Status()
		return !s.Ready && len(s.Backends) == 1 && !s.Backends[0].Up && s.Backends[0].Reason != "" && len(s.RecentErrors) > 0
	})
	s = b.Status()
	if s.Counters.Replies != n || !slices.Contains(s.NotReady, "no backend stream up") {
		t.Fatalf("got replies %d, not ready %q; want %d and no backend stream up", s.Counters.Replies, s.NotReady, n)
	}
	if e := s.RecentErrors[len(s.RecentErrors)-1]; e.Level != "WARN" && e.Level != "ERROR" || !strings.Contains(e.Message+e.Attrs, p.Config.Backend.Targets[0]) {
		t.Fatalf("got last error %+v, want a warning naming the backend", e)
	}
}

func getStatus(t *testing.T, url string) bridge.Status {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s bridge.Status
	dec := json.NewDecoder(resp.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return s
}

// approveWhen is a backend that holds every request until release is
// closed, then approves it.
func approveWhen(release <-chan struct{}) backend.Handler {
	return func(ctx context.Context, env *v1.Envelope) backend.Result {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return approve(env)
	}
}
