// Package devicesim simulates payment terminals: each device is its own MQTT
// client that publishes QoS 1 requests with a bounded number outstanding
// and waits for the replies. The demo, the integration tests and the bench
// drive the bridge with it.
package devicesim

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgebridge/edgebridge/internal/defaults"
	"github.com/edgebridge/edgebridge/internal/schedule"
	"github.com/edgebridge/edgebridge/transcoder"
)

// Config configures a run. Zero values mean the default.
type Config struct {
	Broker      string // tcp://host:port. Required.
	Devices     int    // Default: 50.
	Requests    int    // per device. Default: 100.
	Outstanding int    // requests in flight per device. Default: 4.
	// DevicePrefix names devices prefix-0001…. Default: "dev".
	DevicePrefix string
	// RequestTopic and ReplyTopic with {device_id}. Defaults: payment/request/{device_id}, payment/response/{device_id}.
	RequestTopic, ReplyTopic string
	// Counters, if set, is updated live so callers can watch a run.
	Counters *Counters

	// Duration, if set, makes a timed run: devices send until it has
	// passed (Requests, if set, still caps each device), then wait up to
	// Drain for the replies still due.
	Duration time.Duration
	// Drain bounds the wait for the last replies of a timed run. Default: 30s.
	Drain time.Duration
	// Rate, if set, makes an open-loop run: the devices together start
	// Rate requests per second on a fixed schedule whatever the replies do
	// (Outstanding still bounds each device). Latency counts from the
	// scheduled start, so a stalled pipeline shows up as latency rather
	// than as fewer requests.
	Rate float64
	// PayloadSize pads each request's JSON with a "memo" field to this many
	// bytes. Default: no padding (about 90 bytes).
	PayloadSize int
	// Burst makes each device publish its requests without waiting for
	// each PUBACK (as many in flight as paho holds; paho resends them
	// after a reconnect). Result.Acked still holds exactly what the broker
	// PUBACKed. Default: a device waits for each PUBACK before the next.
	Burst bool
	// Connect, if set, gives each device (by id) its own broker URL,
	// credentials or TLS settings: authenticated devices.
	Connect func(deviceID string) Conn
}

// Conn is how one device connects; zero fields take Config's values.
type Conn struct {
	Broker             string
	Username, Password string
	TLS                *tls.Config
}

// Counters are a run's running totals; safe to read while it runs.
type Counters struct {
	Sent, Replied atomic.Int64
	// Acked counts the requests the broker PUBACKed.
	Acked atomic.Int64
}

func (c Config) withDefaults() Config {
	defaults.Positive(&c.Devices, 50)
	if c.Requests <= 0 {
		c.Requests = 100
		if c.Duration > 0 {
			c.Requests = math.MaxInt32 // the clock ends the run
		}
	}
	defaults.Positive(&c.Drain, 30*time.Second)
	defaults.Positive(&c.Outstanding, 4)
	defaults.Zero(&c.DevicePrefix, "dev")
	defaults.Zero(&c.RequestTopic, "payment/request/{device_id}")
	defaults.Zero(&c.ReplyTopic, "payment/response/{device_id}")
	return c
}

// DeviceID names device i.
func (c Config) DeviceID(i int) string {
	return fmt.Sprintf("%s-%04d", c.withDefaults().DevicePrefix, i)
}

// RequestID names request n of a device.
func RequestID(n int) string { return fmt.Sprintf("r-%06d", n) }

// Amount is the amount of request n: every tenth is above the reference
// backend's limit, so it is declined.
func Amount(n int) int64 {
	if n%10 == 9 {
		return 250000
	}
	return int64(100 + n%5000)
}

// Result summarises a run.
type Result struct {
	Sent, Replied int
	Duplicates    int            // replies received more than once
	ByStatus      map[string]int // first reply per request
	Latencies     []time.Duration
	Missing       []string        // device/request without a reply
	Acked         map[string]bool // device/request the broker PUBACKed: the requests promised
	Elapsed       time.Duration
	// InWindow counts the replies that arrived within a timed run's
	// Duration (the rest arrived while draining); Replied otherwise.
	InWindow int
}

// Lost counts the requests the broker PUBACKed that got no reply: promised,
// then not answered.
func (r Result) Lost() int {
	n := 0
	for _, k := range r.Missing {
		if r.Acked[k] {
			n++
		}
	}
	return n
}

// Percentile returns the p-th percentile (0..100) of the latencies.
func (r Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	s := slices.Clone(r.Latencies)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// Progress is called about once a second with running totals.
type Progress func(sent, replied int)

// Run connects every device, sends its requests and waits for every reply or
// for ctx to end. It returns the result either way; err is set only when
// devices could not connect.
func Run(ctx context.Context, cfg Config, progress Progress) (Result, error) {
	cfg = cfg.withDefaults()
	if cfg.Counters == nil {
		cfg.Counters = new(Counters)
	}
	sent, replied := &cfg.Counters.Sent, &cfg.Counters.Replied
	devs := make([]*device, cfg.Devices)
	for i := range devs {
		d, err := connect(ctx, cfg, cfg.DeviceID(i+1), replied, &cfg.Counters.Acked)
		if err != nil {
			for _, d := range devs[:i] {
				d.c.Disconnect(0)
			}
			return Result{}, err
		}
		devs[i] = d
	}
	defer func() {
		for _, d := range devs {
			d.c.Disconnect(100)
		}
	}()

	start := time.Now()
	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	if progress != nil {
		pwg.Go(func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					progress(int(sent.Load()), int(replied.Load()))
				case <-stopProgress:
					return
				}
			}
		})
	}
	var wg sync.WaitGroup
	for i, d := range devs {
		wg.Go(func() { d.run(ctx, cfg, start, i, sent) })
	}
	wg.Wait()
	close(stopProgress)
	pwg.Wait()

	res := Result{ByStatus: map[string]int{}, Acked: map[string]bool{}, Elapsed: time.Since(start)}
	for _, d := range devs {
		d.mu.Lock()
		res.Sent += d.sent
		res.Duplicates += d.dups
		for n := range d.sent {
			rid := RequestID(n)
			if d.acked[rid] {
				res.Acked[d.id+"/"+rid] = true
			}
			r, ok := d.replies[rid]
			if !ok {
				res.Missing = append(res.Missing, d.id+"/"+rid)
				continue
			}
			res.Replied++
			if cfg.Duration == 0 || !d.sentAt[rid].Add(r.latency).After(start.Add(cfg.Duration)) {
				res.InWindow++
			}
			res.ByStatus[r.status]++
			res.Latencies = append(res.Latencies, r.latency)
		}
		d.mu.Unlock()
	}
	return res, nil
}

type reply struct {
	status  string
	latency time.Duration
}

type device struct {
	id      string
	c       paho.Client
	slots   chan struct{}
	mu      sync.Mutex
	sentAt  map[string]time.Time
	replies map[string]reply
	sent    int
	acked   map[string]bool // request ids the broker PUBACKed
	store   *orderedStore   // paho's session store
	dups    int
	stopped bool          // no more requests will be sent
	all     chan struct{} // closed once stopped and every sent request has a reply
}

// checkAll closes all once the device stopped sending and has every reply.
// d.mu must be held.
func (d *device) checkAll() {
	if d.stopped && len(d.replies) == d.sent {
		select {
		case <-d.all:
		default:
			close(d.all)
		}
	}
}

func connect(ctx context.Context, cfg Config, id string, replied, acked *atomic.Int64) (*device, error) {
	d := &device{
		id: id, slots: make(chan struct{}, cfg.Outstanding),
		sentAt: map[string]time.Time{}, replies: map[string]reply{}, acked: map[string]bool{},
		all: make(chan struct{}), store: newOrderedStore(),
	}
	d.store.onAck = func(pk *packets.PublishPacket) {
		var req struct {
			RequestID string `json:"request_id"`
		}
		if json.Unmarshal(pk.Payload, &req) != nil {
			return
		}
		d.mu.Lock()
		if !d.acked[req.RequestID] {
			d.acked[req.RequestID] = true
			acked.Add(1)
		}
		d.mu.Unlock()
	}
	replyTopic := expand(cfg.ReplyTopic, id)
	onReply := func(_ paho.Client, m paho.Message) {
		var r transcoder.Reply
		if json.Unmarshal(m.Payload(), &r) != nil {
			return
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		at, ok := d.sentAt[r.RequestID]
		if !ok {
			return
		}
		if _, seen := d.replies[r.RequestID]; seen {
			d.dups++
			return
		}
		d.replies[r.RequestID] = reply{status: r.Status, latency: time.Since(at)}
		replied.Add(1)
		select {
		case <-d.slots:
		default:
		}
		d.checkAll()
	}
	conn := Conn{Broker: cfg.Broker}
	if cfg.Connect != nil {
		if conn = cfg.Connect(id); conn.Broker == "" {
			conn.Broker = cfg.Broker
		}
	}
	opts := paho.NewClientOptions().AddBroker(conn.Broker).SetClientID(id).
		SetUsername(conn.Username).SetPassword(conn.Password).SetTLSConfig(conn.TLS).
		SetCleanSession(false). // replies published while we reconnect are kept
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(200 * time.Millisecond).
		SetMaxReconnectInterval(time.Second).
		SetOrderMatters(false).
		SetStore(d.store). // in-flight requests resent in order after a reconnect
		SetOnConnectHandler(func(c paho.Client) { c.Subscribe(replyTopic, 1, onReply).Wait() })
	opts.SetDefaultPublishHandler(onReply)
	d.c = paho.NewClient(opts)
	tok := d.c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return nil, fmt.Errorf("devicesim: %s connect: %w", id, err)
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// Wait for the reply subscription before publishing.
	sub := d.c.Subscribe(replyTopic, 1, onReply)
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		return nil, fmt.Errorf("devicesim: %s subscribe: %v", id, sub.Error())
	}
	return d, nil
}

// run sends the device's requests; device i of a run that started at start.
func (d *device) run(ctx context.Context, cfg Config, start time.Time, i int, sent *atomic.Int64) {
	reqTopic := expand(cfg.RequestTopic, d.id)
	sendCtx := ctx
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		sendCtx, cancel = context.WithDeadline(ctx, start.Add(cfg.Duration))
		defer cancel()
	}
	// Open loop: device i sends at start + offset + k*interval, the devices
	// staggered evenly over one interval.
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(cfg.Devices) / cfg.Rate * float64(time.Second))
		start = start.Add(interval * time.Duration(i) / time.Duration(cfg.Devices))
	}
	for n := range cfg.Requests {
		at := start.Add(interval * time.Duration(n)) // the open loop's schedule
		if interval > 0 && !schedule.Sleep(sendCtx, time.Until(at)) {
			break
		}
		select {
		case d.slots <- struct{}{}:
		case <-sendCtx.Done():
		}
		if sendCtx.Err() != nil {
			break
		}
		if interval == 0 {
			at = time.Now()
		}
		rid := RequestID(n)
		// A fresh buffer each time: paho keeps it for resending.
		body := appendRequest(make([]byte, 0, max(cfg.PayloadSize, 128)), rid, Amount(n), "m-"+d.id, cfg.PayloadSize)
		d.mu.Lock()
		d.sentAt[rid] = at
		d.sent++
		d.mu.Unlock()
		tok := d.c.Publish(reqTopic, 1, false, body)
		if cfg.Burst {
			// Returns once paho queued it (or gave up queueing: then it
			// is in the store and resent after a reconnect); the store
			// sees its PUBACK.
			sent.Add(1)
			continue
		}
		select {
		case <-tok.Done():
		case <-ctx.Done():
			return
		}
		if tok.Error() != nil {
			// The connection failed under the publish: paho resends it
			// from the store after reconnecting. A device keeps its order:
			// the next request waits until that one is acknowledged.
			if !d.store.WaitSent(ctx) {
				return
			}
		}
		sent.Add(1)
	}
	d.mu.Lock()
	d.stopped = true
	d.checkAll()
	d.mu.Unlock()
	var drain <-chan time.Time
	if cfg.Duration > 0 {
		t := time.NewTimer(cfg.Drain)
		defer t.Stop()
		drain = t.C
	}
	select {
	case <-d.all:
	case <-ctx.Done():
	case <-drain:
	}
}

// appendRequest appends a request's JSON to b, padded with a "memo" field
// to size bytes when it is shorter.
func appendRequest(b []byte, rid string, amount int64, merchant string, size int) []byte {
	b = append(b, `{"request_id":"`...)
	b = append(b, rid...)
	b = append(b, `","amount_minor":`...)
	b = strconv.AppendInt(b, amount, 10)
	b = append(b, `,"currency":"EUR","merchant_id":"`...)
	b = append(b, merchant...)
	b = append(b, '"')
	const memo = `,"memo":""}`
	if pad := size - len(b) - len(memo); pad > 0 {
		b = append(b, memo[:len(memo)-2]...)
		for range pad {
			b = append(b, 'x')
		}
		return append(b, `"}`...)
	}
	return append(b, '}')
}

func expand(pattern, id string) string { return strings.ReplaceAll(pattern, "{device_id}", id) }
