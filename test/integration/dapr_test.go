package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dapr "github.com/dapr/go-sdk/client"
	"github.com/dapr/go-sdk/service/common"
	daprgrpc "github.com/dapr/go-sdk/service/grpc"
	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/grpc"

	runtimev1 "github.com/dapr/dapr/pkg/proto/runtime/v1"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/daprcomp"
	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/proc"
	"github.com/edgebridge/edgebridge/transcoder"
)

// Names from the shipped components/*.yaml, which the tests load as they are.
const (
	pubsubName   = "edgebridge-pubsub"
	bindingName  = "edgebridge-devices"
	requestTopic = "edgebridge.payment.requests"
	replyTopic   = "payment.replies"
	appID        = "payments" // components/subscription.yaml is scoped to it
)

var daprdOnce struct {
	sync.Once
	path string
	err  error
}

// daprdPath is the daprd built from github.com/dapr/dapr (scripts/daprd.sh,
// cached after the first build); EDGEBRIDGE_DAPRD names a prebuilt one.
func daprdPath(t *testing.T) string {
	t.Helper()
	daprdOnce.Do(func() {
		if p := os.Getenv("EDGEBRIDGE_DAPRD"); p != "" {
			daprdOnce.path = p
			return
		}
		out, err := exec.Command("../../scripts/daprd.sh").Output()
		daprdOnce.path, daprdOnce.err = strings.TrimSpace(string(out)), err
	})
	if daprdOnce.err != nil {
		t.Fatalf("build daprd: %v", daprdOnce.err)
	}
	return daprdOnce.path
}

// daprStack is Mosquitto, the Kafka broker, the bridge serving its
// component socket (no gRPC backends), a Dapr app written with the go-sdk,
// and its daprd.
type daprStack struct {
	mqtt, kafka string
	bridge      *bridgeProc
	app         *paymentsApp
	daprd       *daprdProc
}

func newDaprStack(t *testing.T) *daprStack {
	t.Helper()
	s := &daprStack{mqtt: mosquitto(t), kafka: kafkaBroker(t)}
	sockets := t.TempDir()
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: s.mqtt, kafka: s.kafka, top: fmt.Sprintf(`dapr:
  enabled: true
  socket_folder: %s
  socket_name: edgebridge
  reply_topic: %s
`, sockets, replyTopic)})
	s.bridge = startBridge(t, cfgPath, admin)
	if fi, err := os.Stat(filepath.Join(sockets, "edgebridge.sock")); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("component socket: %v %v, want mode 0660", fi, err)
	}
	s.app = startPaymentsApp(t)
	s.daprd = startDaprd(t, sockets, s.app.port)
	s.app.connect(t, s.daprd.grpcAddr)
	return s
}

// daprdProc is a real daprd with fixed ports, so it can be restarted.
type daprdProc struct {
	*proc.Process
	t                         *testing.T
	bin, sockets, resources   string
	appPort                   string
	grpcAddr, httpAddr, args  string
	internalPort, metricsPort string
}

func startDaprd(t *testing.T, sockets, appPort string) *daprdProc {
	t.Helper()
	resources := t.TempDir()
	for _, f := range []string{"pubsub.yaml", "binding.yaml", "subscription.yaml"} {
		b, err := os.ReadFile(filepath.Join("../../components", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(resources, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Three different ports: one at a time, two could be the same.
	addrs, err := proc.FreeAddrs(3)
	if err != nil {
		t.Fatal(err)
	}
	_, internalPort, _ := net.SplitHostPort(addrs[0])
	d := &daprdProc{t: t, bin: daprdPath(t), sockets: sockets, resources: resources, appPort: appPort,
		internalPort: internalPort}
	d.grpcAddr, d.httpAddr = addrs[1], addrs[2]
	d.start()
	return d
}

func (d *daprdProc) start() {
	d.t.Helper()
	_, grpcPort, _ := net.SplitHostPort(d.grpcAddr)
	_, httpPort, _ := net.SplitHostPort(d.httpAddr)
	d.Process = startEnv(d.t, []string{"DAPR_COMPONENTS_SOCKETS_FOLDER=" + d.sockets}, d.bin,
		"--app-id", appID, "--app-port", d.appPort, "--app-protocol", "grpc", "--app-channel-address", "127.0.0.1",
		"--dapr-listen-addresses", "127.0.0.1", "--dapr-grpc-port", grpcPort, "--dapr-http-port", httpPort,
		"--dapr-internal-grpc-port", d.internalPort, "--dapr-internal-grpc-listen-address", "127.0.0.1",
		"--enable-metrics=false",
		"--resources-path", d.resources, "--log-level", "info")
	waitFor(d.t, 60*time.Second, "daprd healthy", func() bool {
		select {
		case <-d.Done():
			d.t.Fatalf("daprd exited: %v\n%s", d.Err(), tail(d.Output(), 4000))
		default:
		}
		resp, err := http.Get("http://" + d.httpAddr + "/v1.0/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusNoContent
	})
}

// paymentsApp is the Dapr app: it approves every request it receives on
// the declarative subscription (components/subscription.yaml) by
// publishing the reply to the reply topic, asks Dapr to retry some
// requests the first times, and subscribes to "orders" in code.
type paymentsApp struct {
	port   string
	client dapr.Client

	mu        sync.Mutex
	attempts  map[string]int    // deliveries per message id
	processed map[string][]byte // message id -> reply published (dedup)
	twice     int               // requests processed again after a reply was published
	orders    []string
}

// retryFirst: requests whose number ends in 3 are answered RETRY on their
// first two deliveries.
func retryFirst(requestID string) bool { return strings.HasSuffix(requestID, "3") }

func startPaymentsApp(t *testing.T) *paymentsApp {
	t.Helper()
	a := &paymentsApp{attempts: map[string]int{}, processed: map[string][]byte{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, a.port, _ = net.SplitHostPort(ln.Addr().String())
	// The request topic is subscribed declaratively; the go-sdk lists every
	// handler as a programmatic subscription (which would take precedence),
	// so the listing leaves that one out.
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		if l, ok := resp.(*runtimev1.ListTopicSubscriptionsResponse); ok && err == nil {
			var keep []*runtimev1.TopicSubscription
			for _, s := range l.Subscriptions {
				if s.Topic != requestTopic {
					keep = append(keep, s)
				}
			}
			l.Subscriptions = keep
		}
		return resp, err
	}))
	svc := daprgrpc.NewServiceWithGrpcServer(ln, gs)
	if err := svc.AddTopicEventHandler(&common.Subscription{PubsubName: pubsubName, Topic: requestTopic, Route: "/payments"}, a.onRequest); err != nil {
		t.Fatal(err)
	}
	if err := svc.AddTopicEventHandler(&common.Subscription{PubsubName: pubsubName, Topic: "orders"}, func(_ context.Context, e *common.TopicEvent) (bool, error) {
		a.mu.Lock()
		a.orders = append(a.orders, string(e.RawData))
		a.mu.Unlock()
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Start() }()
	t.Cleanup(func() {
		_ = svc.GracefulStop()
		<-done
		if a.client != nil {
			a.client.Close()
		}
	})
	return a
}

func (a *paymentsApp) connect(t *testing.T, daprGRPC string) {
	t.Helper()
	c, err := dapr.NewClientWithAddress(daprGRPC)
	if err != nil {
		t.Fatalf("dapr client: %v", err)
	}
	a.client = c
}

func (a *paymentsApp) onRequest(ctx context.Context, e *common.TopicEvent) (retry bool, err error) {
	var req daprcomp.Request
	if err := json.Unmarshal(e.RawData, &req); err != nil || req.MessageID == "" || req.DeviceID == "" {
		return false, fmt.Errorf("not a device request: %v: %s", err, e.RawData) // dropped
	}
	a.mu.Lock()
	a.attempts[req.MessageID]++
	n := a.attempts[req.MessageID]
	reply, seen := a.processed[req.MessageID]
	a.mu.Unlock()
	if !seen {
		if retryFirst(req.RequestID) && n <= 2 {
			return true, fmt.Errorf("ledger busy (attempt %d)", n)
		}
		// The payment's effect is recorded once, with its reply (as a
		// ledger would); a redelivery only sends the stored reply again.
		reply, _ = json.Marshal(map[string]string{"device_id": req.DeviceID, "request_id": req.RequestID,
			"message_id": req.MessageID, "status": "approved", "reason": fmt.Sprintf("attempt %d", n)})
		a.mu.Lock()
		a.processed[req.MessageID] = reply
		a.mu.Unlock()
	}
	// Published before the ACK: a crash in between redelivers the request
	// and the same reply is sent again.
	if err := a.client.PublishEvent(ctx, pubsubName, replyTopic, reply, dapr.PublishEventWithContentType("application/json")); err != nil {
		return true, err
	}
	return false, nil
}

func (a *paymentsApp) counts() (processed int, attempts map[string]int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	attempts = make(map[string]int, len(a.attempts))
	for k, v := range a.attempts {
		attempts[k] = v
	}
	return len(a.processed), attempts
}

// TestDaprPubSubEndToEnd: devices publish over MQTT; the Dapr app gets
// each request through its declarative subscription as a CloudEvent,
// publishes the reply to the reply topic, and every device gets its reply
// over MQTT. Requests the app answers RETRY are redelivered and succeed.
// The app also uses edgebridge as a plain pubsub and the output binding.
func TestDaprPubSubEndToEnd(t *testing.T) {
	s := newDaprStack(t)
	ctx := withTimeout(t, 4*time.Minute)

	cfg := devicesim.Config{Broker: s.mqtt, Devices: 10, Requests: 30, Outstanding: 2, DevicePrefix: "dapr"}
	res := <-runDevices(ctx, cfg)
	want := cfg.Devices * cfg.Requests
	if res.Replied != want || len(res.Missing) > 0 {
		t.Fatalf("got %d replies, want %d; missing (first 5): %v", res.Replied, want, res.Missing[:min(5, len(res.Missing))])
	}
	if res.ByStatus[transcoder.StatusApproved] != want {
		t.Errorf("got statuses %v, want %d APPROVED", res.ByStatus, want)
	}
	processed, attempts := s.app.counts()
	if processed != want {
		t.Errorf("app processed %d requests, want %d", processed, want)
	}
	retried := 0
	for i := 1; i <= cfg.Devices; i++ {
		for n := range cfg.Requests {
			req := devicesim.RequestID(n)
			id := v1.MessageID(cfg.DeviceID(i), req)
			switch got := attempts[id]; {
			case retryFirst(req) && got < 3:
				t.Errorf("%s/%s: %d deliveries, want 3 (RETRY twice, then OK)", cfg.DeviceID(i), req, got)
			case retryFirst(req):
				retried++
			case got < 1:
				t.Errorf("%s/%s never reached the app", cfg.DeviceID(i), req)
			}
		}
	}
	if retried == 0 {
		t.Error("no request was retried: the retry path was not exercised")
	}

	// Plain pubsub: the app publishes to a topic its second subscription reads.
	for i := range 5 {
		if err := s.app.client.PublishEvent(ctx, pubsubName, "orders", map[string]int{"order": i}); err != nil {
			t.Fatalf("publish order: %v", err)
		}
	}
	waitFor(t, 60*time.Second, "5 orders at the app's second subscription", func() bool {
		s.app.mu.Lock()
		defer s.app.mu.Unlock()
		return len(s.app.orders) >= 5
	})
	s.app.mu.Lock()
	if !strings.Contains(strings.Join(s.app.orders, " "), `{"order":4}`) {
		t.Errorf("orders received: %v", s.app.orders)
	}
	s.app.mu.Unlock()

	// Output binding: a command to a device over MQTT.
	got := make(chan string, 1)
	dev := paho.NewClient(paho.NewClientOptions().AddBroker(s.mqtt).SetClientID("dapr-cmd-device"))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	defer dev.Disconnect(0)
	if tok := dev.Subscribe("device/term-9/command", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if err := s.app.client.InvokeOutputBinding(ctx, &dapr.InvokeBindingRequest{Name: bindingName, Operation: "create",
		Data: []byte(`{"cmd":"print-receipt"}`), Metadata: map[string]string{"topic": "device/term-9/command"}}); err != nil {
		t.Fatalf("invoke binding: %v", err)
	}
	select {
	case m := <-got:
		if m != `{"cmd":"print-receipt"}` {
			t.Errorf("device got %q", m)
		}
	case <-ctx.Done():
		t.Fatal("device never got the command")
	}
	err := s.app.client.InvokeOutputBinding(ctx, &dapr.InvokeBindingRequest{Name: bindingName, Operation: "create", Data: []byte("x")})
	if err == nil || !strings.Contains(err.Error(), "topic") {
		t.Errorf("invoke without topic: got %v, want an error naming the topic", err)
	}
	// A device's request topic is not the binding's to publish to: an app
	// could otherwise pay as any device.
	err = s.app.client.InvokeOutputBinding(ctx, &dapr.InvokeBindingRequest{Name: bindingName, Operation: "create",
		Data: []byte(`{"request_id":"via-dapr","amount_minor":1,"currency":"EUR"}`), Metadata: map[string]string{"topic": "payment/request/term-9"}})
	if err == nil || !strings.Contains(err.Error(), "may not publish") {
		t.Errorf("invoke on a request topic: got %v, want a refusal", err)
	}

	// The bridge's metrics saw it all.
	for name, min := range map[string]float64{
		"edgebridge_dapr_subscriptions":                   2, // requests and orders
		`edgebridge_dapr_events_total{event="commanded"}`: 1,
		`edgebridge_dapr_events_total{event="delivered"}`: float64(want + 5),
		`edgebridge_dapr_events_total{event="failed"}`:    float64(2 * retried),
		`edgebridge_dapr_events_total{event="replied"}`:   float64(want),
	} {
		if v, err := s.bridge.Metric(name); err != nil || v < min {
			t.Errorf("metric %s = %v (%v), want at least %v", name, v, err, min)
		}
	}
}

// TestDaprdKilledMidStream: daprd is SIGKILLed while requests flow and
// started again; it re-opens the subscription and no request is lost.
func TestDaprdKilledMidStream(t *testing.T) {
	s := newDaprStack(t)
	ctx := withTimeout(t, 4*time.Minute)

	counters := &devicesim.Counters{}
	cfg := devicesim.Config{Broker: s.mqtt, Devices: 10, Requests: 60, Outstanding: 2, DevicePrefix: "kill", Counters: counters}
	results := runDevices(ctx, cfg)
	want := cfg.Devices * cfg.Requests
	waitFor(t, 2*time.Minute, "a third of the replies", func() bool { return counters.Replied.Load() >= int64(want/3) })
	s.daprd.Kill()
	atKill := counters.Replied.Load()
	killed := time.Now()
	s.daprd.start()
	restarted := time.Since(killed)
	waitFor(t, 2*time.Minute, "a reply after the restart", func() bool { return counters.Replied.Load() > atKill })
	t.Logf("daprd killed at %d/%d replies; healthy again after %s; replies flowing again %s after the kill",
		atKill, want, restarted.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	res := <-results
	if res.Replied != want || len(res.Missing) > 0 {
		t.Fatalf("got %d replies, want %d; missing (first 5): %v", res.Replied, want, res.Missing[:min(5, len(res.Missing))])
	}
	if atKill >= int64(want) {
		t.Fatalf("all %d replies arrived before the kill: the kill was not mid-stream", atKill)
	}
	processed, _ := s.app.counts()
	if processed != want {
		t.Errorf("app processed %d distinct requests, want %d", processed, want)
	}
	if !strings.Contains(s.daprd.Output(), "pluggable component 'edgebridge' was successfully registered for 'dapr.proto.components.v1.PubSub'") {
		t.Error("the restarted daprd did not register the component")
	}
}
