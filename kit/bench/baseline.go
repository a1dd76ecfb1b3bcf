package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/segmentio/kafka-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/transcoder"
)

// Topics of the raw MQTT baseline; the bridge does not subscribe to them.
const (
	rawRequestTopic = "bench/request/{device_id}"
	rawReplyTopic   = "bench/response/{device_id}"
)

// reflector is the raw MQTT baseline's stand-in for the bridge: clients
// (responders) that answer every request with a reply to the device's
// reply topic, both QoS 1, without Kafka or a backend in between. They
// share one subscription ($share/...), so the broker hands each request to
// one of them; Run adds responders until one more does not raise the
// round trip's throughput.
type reflector struct {
	broker string
	cs     []paho.Client
}

// maxResponders bounds the reflector's responders.
const maxResponders = 8

func startReflector(broker string) (*reflector, error) {
	r := &reflector{broker: broker}
	return r, r.add()
}

// add connects one more responder.
func (r *reflector) add() error {
	handle := func(c paho.Client, m paho.Message) {
		var req struct {
			RequestID string `json:"request_id"`
		}
		_ = json.Unmarshal(m.Payload(), &req) // the devices' own requests
		reply := transcoder.EncodeReply(&v1.PaymentReply{
			RequestId: req.RequestID, Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED,
		})
		topic := mqttin.ReplyTopic(rawReplyTopic, mqttin.DeviceID(m.Topic()))
		c.Publish(topic, 1, false, reply) // the broker's PUBACK is not waited for
	}
	// The handler is the default one: paho's router does not match a
	// message's topic against a $share filter.
	opts := paho.NewClientOptions().AddBroker(r.broker).SetClientID(fmt.Sprintf("edgebridge-bench-reflector-%d", len(r.cs)+1)).
		SetCleanSession(true).SetOrderMatters(false).SetAutoReconnect(true).SetDefaultPublishHandler(handle)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return fmt.Errorf("bench: reflector connect: %v", tok.Error())
	}
	tok := c.Subscribe("$share/edgebridge-bench/"+mqttin.ReplyTopic(rawRequestTopic, "+"), 1, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		c.Disconnect(0)
		return fmt.Errorf("bench: reflector subscribe: %v", tok.Error())
	}
	r.cs = append(r.cs, c)
	return nil
}

func (r *reflector) close() {
	for _, c := range r.cs {
		c.Disconnect(100)
	}
}

// window is a closed loop's bounded set of outstanding messages, each
// with its start time, and the latencies of those that came back.
type window struct {
	slots   chan struct{}
	changed chan struct{} // signalled on every release
	mu      sync.Mutex
	start   map[uint64]time.Time
	lat     []time.Duration
	end     time.Time // replies after end do not count as throughput
	inWin   int
}

func newWindow(size int, end time.Time) *window {
	return &window{slots: make(chan struct{}, size), changed: make(chan struct{}, 1), start: map[uint64]time.Time{}, end: end}
}

// acquire waits for a free slot and records id's start; false once ctx ended.
func (w *window) acquire(ctx context.Context, id uint64) bool {
	select {
	case w.slots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	w.mu.Lock()
	w.start[id] = time.Now()
	w.mu.Unlock()
	return true
}

// release records id's round trip; unknown or repeated ids are ignored.
func (w *window) release(id uint64) {
	now := time.Now()
	w.mu.Lock()
	at, ok := w.start[id]
	if ok {
		delete(w.start, id)
		w.lat = append(w.lat, now.Sub(at))
		if !now.After(w.end) {
			w.inWin++
		}
	}
	w.mu.Unlock()
	if ok {
		<-w.slots
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
}

// drain waits until nothing is outstanding, or limit.
func (w *window) drain(limit time.Duration) {
	t := time.NewTimer(limit)
	defer t.Stop()
	for len(w.slots) > 0 {
		select {
		case <-w.changed:
		case <-t.C:
			return
		}
	}
}

func (w *window) result(name string, d time.Duration, window int) Scenario {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Scenario{
		Name: name, Outstanding: window, Messages: w.inWin, Seconds: d.Seconds(),
		Throughput: float64(w.inWin) / d.Seconds(), Lost: len(w.start), lat: w.lat, replies: len(w.lat),
	}
}

// runKafka is the raw kafka-go baseline: devices*outstanding writers,
// each writing one record at a time with the bridge's producer settings
// (acks=all, 1ms batch timeout, keyed), into a fresh topic read back by
// one reader per partition. A record's round trip is write -> read.
func runKafka(ctx context.Context, brokers []string, topic string, partitions, devices, outstanding, size int, d time.Duration) (Scenario, error) {
	if err := kafkapipe.EnsureTopics(ctx, brokers, kafkapipe.Security{}, partitions, topic); err != nil {
		return Scenario{}, err
	}
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{
		Addr: kafka.TCP(brokers...), Transport: tr, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, BatchSize: 1000, BatchBytes: 16 << 20,
	}
	defer w.Close()

	start := time.Now()
	win := newWindow(devices*outstanding, start.Add(d))
	rctx, stopReaders := context.WithCancel(ctx)
	defer stopReaders()
	var readers sync.WaitGroup
	for p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers: brokers, Topic: topic, Partition: p, MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 250 * time.Millisecond,
			Dialer: &kafka.Dialer{Timeout: 10 * time.Second},
		})
		readers.Go(func() {
			defer r.Close()
			for {
				m, err := r.ReadMessage(rctx)
				if err != nil {
					return
				}
				if len(m.Value) >= 8 {
					win.release(binary.BigEndian.Uint64(m.Value))
				}
			}
		})
	}
	sendCtx, stopSend := context.WithDeadline(ctx, start.Add(d))
	defer stopSend()
	var writers sync.WaitGroup
	var next atomic.Uint64
	var writeErr atomic.Pointer[error]
	for dev := range devices * outstanding {
		key := []byte("dev-" + strconv.Itoa(dev%devices))
		writers.Go(func() {
			for {
				id := next.Add(1)
				if !win.acquire(sendCtx, id) {
					return
				}
				value := make([]byte, size)
				binary.BigEndian.PutUint64(value, id)
				if err := w.WriteMessages(ctx, kafka.Message{Topic: topic, Key: key, Value: value}); err != nil {
					writeErr.Store(&err)
					return
				}
			}
		})
	}
	writers.Wait()
	win.drain(30 * time.Second)
	stopReaders()
	readers.Wait()
	if err := writeErr.Load(); err != nil {
		return Scenario{}, fmt.Errorf("bench: kafka baseline: %w", *err)
	}
	return win.result("kafka raw", d, devices*outstanding), nil
}

// echoServer is the raw gRPC baseline's server: it ACKs every delivery at
// once on the same bidi stream protocol the bridge speaks, with a small
// reply, and no store or handler behind it.
type echoServer struct {
	v1.UnimplementedDeliveryServer
}

func (echoServer) Stream(s v1.Delivery_StreamServer) error {
	reply := make([]byte, 96)
	for {
		f, err := s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var out *v1.ServerFrame
		switch fr := f.Frame.(type) {
		case *v1.ClientFrame_Hello:
			out = &v1.ServerFrame{Frame: &v1.ServerFrame_Welcome{Welcome: &v1.Welcome{BackendId: "echo"}}}
		case *v1.ClientFrame_Deliver:
			out = &v1.ServerFrame{Frame: &v1.ServerFrame_Ack{Ack: &v1.Ack{
				Seq: fr.Deliver.GetSeq(), MessageId: fr.Deliver.GetEnvelope().GetMessageId(), Outcome: v1.Outcome_OUTCOME_OK, RawReply: reply,
			}}}
		default:
			continue
		}
		if err := s.Send(out); err != nil {
			return err
		}
	}
}

// runGRPC is the raw gRPC baseline: one bidi stream, window deliveries
// of size-byte envelopes outstanding, each ACKed by the echo server.
func runGRPC(ctx context.Context, window, size int, d time.Duration) (Scenario, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Scenario{}, err
	}
	srv := grpc.NewServer()
	v1.RegisterDeliveryServer(srv, echoServer{})
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return Scenario{}, err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := v1.NewDeliveryClient(conn).Stream(sctx)
	if err != nil {
		return Scenario{}, err
	}
	if err := stream.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Hello{Hello: &v1.Hello{BridgeId: "bench", Window: uint32(window)}}}); err != nil {
		return Scenario{}, err
	}
	if _, err := stream.Recv(); err != nil { // welcome
		return Scenario{}, err
	}
	start := time.Now()
	win := newWindow(window, start.Add(d))
	recvDone := make(chan error, 1)
	go func() {
		for {
			f, err := stream.Recv()
			if err != nil {
				recvDone <- err
				return
			}
			if a := f.GetAck(); a != nil {
				win.release(a.GetSeq())
			}
		}
	}()
	sendCtx, stopSend := context.WithDeadline(ctx, start.Add(d))
	defer stopSend()
	payload := make([]byte, size)
	for seq := uint64(1); win.acquire(sendCtx, seq); seq++ {
		env := &v1.Envelope{MessageId: "m-" + strconv.FormatUint(seq, 10), DeviceId: "dev-0001", RequestId: "r-1", Payload: payload}
		if err := stream.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: seq, Envelope: env}}}); err != nil {
			return Scenario{}, fmt.Errorf("bench: grpc baseline send: %w", err)
		}
	}
	win.drain(30 * time.Second)
	_ = stream.CloseSend()
	cancel()
	<-recvDone
	return win.result("grpc echo", d, window), nil
}
