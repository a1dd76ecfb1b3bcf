// Package mqttin is edgebridge's MQTT hop: it subscribes to device request
// topics with QoS 1 on a persistent session and hands each message to the
// pipeline in arrival order; the PUBACK is sent only when the pipeline calls
// Message.Ack (after Kafka acknowledged the write). It also publishes replies
// to devices with QoS 1.
package mqttin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/internal/defaults"
)

// ErrClosed is returned by Publish after the client stopped.
var ErrClosed = errors.New("mqttin: client closed")

// ErrInvalidTopic is wrapped by the error of a publish to a topic no MQTT
// broker accepts; sending it again cannot succeed.
var ErrInvalidTopic = errors.New("mqttin: invalid topic")

// ValidTopic reports why topic cannot be published to, wrapping
// ErrInvalidTopic, or nil. A topic has 1 to 65,535 bytes of UTF-8 and no
// wildcards; like Mosquitto it must not hold U+0000, control characters
// (U+0001-U+001F, U+007F-U+009F) or non-characters, which Mosquitto
// answers by disconnecting the client for a malformed packet.
func ValidTopic(topic string) error {
	bad := func(why string) error { return fmt.Errorf("%w: %s", ErrInvalidTopic, why) }
	switch {
	case topic == "":
		return bad("empty")
	case len(topic) > v1.MaxTopicLen:
		return bad(fmt.Sprintf("%d bytes, limit %d", len(topic), v1.MaxTopicLen))
	case !utf8.ValidString(topic):
		return bad("not valid UTF-8")
	case strings.ContainsAny(topic, "+#"):
		return bad("holds a wildcard")
	}
	for _, r := range topic {
		if r <= 0x1f || (r >= 0x7f && r <= 0x9f) || (r >= 0xfdd0 && r <= 0xfdef) || r&0xfffe == 0xfffe {
			return bad(fmt.Sprintf("holds %U", r))
		}
	}
	return nil
}

// Config configures a Client. Zero values mean the default.
type Config struct {
	// Broker URL, e.g. tcp://127.0.0.1:1883. Required.
	Broker string
	// ClientID must be stable: the broker keeps the session (subscriptions
	// and un-acknowledged QoS 1 messages) under it. Required.
	ClientID string
	// Subscribe lists the request topic filters, subscribed with QoS 1.
	Subscribe []string
	// QueueSize bounds messages received but not yet taken by the pipeline.
	// Keep it above the broker's in-flight limit for this client, or the
	// receive path blocks. Default: 4096.
	QueueSize int
	// KeepAlive is the MQTT keepalive. Default: 30s.
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt. Default: 10s.
	ConnectTimeout time.Duration
	// MaxReconnectInterval caps the reconnect backoff. Default: 10s.
	MaxReconnectInterval time.Duration
	// ConnectRetryInterval is the wait between attempts of the first
	// connection. Default: 1s.
	ConnectRetryInterval time.Duration
	// Username is the client's MQTT identity; none when empty.
	Username string
	// Password returns the password for each connection attempt (so a
	// rotated one is used from the next reconnect). Nil: none.
	Password func() (string, error)
	// TLS for ssl:// and tls:// brokers. Nil: Go's defaults (system roots).
	TLS *tls.Config
}

// Defaults of Config.
const (
	// DefaultQueueSize bounds the messages received and not yet taken by
	// the pipeline.
	DefaultQueueSize            = 4096
	DefaultKeepAlive            = 30 * time.Second
	DefaultConnectTimeout       = 10 * time.Second
	DefaultMaxReconnectInterval = 10 * time.Second
	DefaultConnectRetryInterval = time.Second
)

func (c Config) withDefaults() Config {
	defaults.Positive(&c.QueueSize, DefaultQueueSize)
	defaults.Positive(&c.KeepAlive, DefaultKeepAlive)
	defaults.Positive(&c.ConnectTimeout, DefaultConnectTimeout)
	defaults.Positive(&c.MaxReconnectInterval, DefaultMaxReconnectInterval)
	defaults.Positive(&c.ConnectRetryInterval, DefaultConnectRetryInterval)
	return c
}

// Message is one device message. Call Ack exactly when the message is safe
// (written to Kafka); an un-acknowledged message is redelivered by the broker
// after a reconnect.
type Message struct {
	Topic      string
	DeviceID   string // last topic level
	Payload    []byte
	ReceivedAt time.Time
	Duplicate  bool // the broker marked it as a redelivery
	// Retained: the broker delivered it from its retained store (on a
	// subscribe), not as it was published.
	Retained bool

	ack   func()        // sends the PUBACK; nil: nothing to acknowledge
	state *atomic.Int32 // of a message an Intake took; nil otherwise
}

// Ack sends the PUBACK for m (an Intake's message: lets the broker send it).
func (m Message) Ack() {
	if m.ack != nil {
		m.ack()
	}
}

// Claim marks m as being written. It returns false for a message whose
// broker gave up waiting (Intake.Take): its device got no PUBACK and sends
// it again, so it must not be written.
func (m Message) Claim() bool {
	return m.state == nil || m.state.CompareAndSwap(msgPending, msgClaimed)
}

// Client is safe for concurrent use. It holds two connections to the
// broker: intake (ClientID, a persistent session subscribed to the request
// topics) and out (ClientID + "-replies", a clean session that publishes
// replies and commands). They are separate because paho handles one
// connection's incoming packets in order on one goroutine: while intake
// holds back (its queue full, Kafka not taking writes), the PUBACKs of the
// replies would wait behind the requests it holds — and replies must go
// out for the backlog to drain and the intake to move again.
type Client struct {
	cfg    Config
	log    *slog.Logger
	intake paho.Client
	out    paho.Client
	msgs   chan Message
	done   chan struct{}
	closed atomic.Bool

	subscribed atomic.Bool
	intakeConn connLog
	outConn    connLog
}

// OutSuffix is appended to Config.ClientID for the connection that
// publishes replies and commands.
const OutSuffix = "-replies"

// Option configures optional hooks.
type Option func(*Client)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *Client) { c.log = l } }

// New returns a Client; it does no I/O.
func New(cfg Config, opts ...Option) (*Client, error) {
	if cfg.Broker == "" || cfg.ClientID == "" {
		return nil, errors.New("mqttin: broker and client id are required")
	}
	cfg = cfg.withDefaults()
	c := &Client{cfg: cfg, log: slog.Default(), msgs: make(chan Message, cfg.QueueSize), done: make(chan struct{})}
	for _, o := range opts {
		o(c)
	}
	broker := redacted(cfg.Broker)
	c.intakeConn = connLog{log: c.log, broker: broker, name: "intake"}
	c.outConn = connLog{log: c.log, broker: broker, name: "replies"}
	in := c.options(cfg.ClientID, &c.intakeConn).
		SetCleanSession(false).
		SetAutoAckDisabled(true).
		// The handler only enqueues (in order); it blocks only when the queue
		// is full, i.e. when Kafka cannot keep up: then the broker holds back.
		SetOrderMatters(true).
		// No ResumeSubs: connected subscribes on every connection. With it,
		// paho also resends that SUBSCRIBE from its store when its resume
		// runs after the handler, and the broker then sends every retained
		// message twice.
		// Messages of a resumed session can arrive before SUBSCRIBE is
		// re-sent; without a default handler paho would drop them un-acked.
		SetDefaultPublishHandler(c.receive).
		SetOnConnectHandler(c.connected).
		SetConnectionLostHandler(func(paho.Client, error) { c.subscribed.Store(false) })
	c.intake = paho.NewClient(in)
	for _, f := range cfg.Subscribe {
		c.intake.AddRoute(f, c.receive)
	}
	// A clean session: nothing of it stays on the broker. A publish cut
	// off by a lost connection is sent again from paho's memory when it
	// reconnects (or fails with the caller's context).
	c.out = paho.NewClient(c.options(cfg.ClientID+OutSuffix, &c.outConn).SetCleanSession(true))
	return c, nil
}

// Run connects (retrying until it succeeds) and keeps the session until ctx
// ends; then it disconnects, leaving the broker's session in place so queued
// messages wait for the next run. Messages received and not acknowledged are
// redelivered by the broker then.
func (c *Client) Run(ctx context.Context) error {
	for _, conn := range []paho.Client{c.out, c.intake} {
		tok := conn.Connect()
		select {
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				c.Close()
				return fmt.Errorf("mqttin: connect %s: %w", c.intakeConn.broker, err)
			}
		case <-ctx.Done():
		}
	}
	<-ctx.Done()
	c.Close()
	return nil
}

// options are the settings both connections share.
func (c *Client) options(clientID string, l *connLog) *paho.ClientOptions {
	po := paho.NewClientOptions().
		AddBroker(c.cfg.Broker).
		SetClientID(clientID).
		SetKeepAlive(c.cfg.KeepAlive).
		SetPingTimeout(c.cfg.KeepAlive / 2).
		SetConnectTimeout(c.cfg.ConnectTimeout).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(c.cfg.ConnectRetryInterval).
		SetMaxReconnectInterval(c.cfg.MaxReconnectInterval).
		SetWriteTimeout(c.cfg.ConnectTimeout).
		SetConnectionNotificationHandler(l.notified)
	if c.cfg.Username != "" || c.cfg.Password != nil {
		po.SetCredentialsProvider(func() (string, string) { return c.credentials(l) })
	}
	if c.cfg.TLS != nil {
		po.SetTLSConfig(c.cfg.TLS)
	}
	if u, err := url.Parse(c.cfg.Broker); err == nil && (u.Scheme == "tcp" || u.Scheme == "mqtt") {
		po.SetCustomOpenConnectionFn(openConn)
	}
	return po
}

// Close disconnects. Safe to call more than once.
func (c *Client) Close() {
	if c.closed.CompareAndSwap(false, true) {
		close(c.done)
		c.subscribed.Store(false)
		c.intake.Disconnect(250)
		c.out.Disconnect(250)
	}
}

// Messages returns the received messages in arrival order.
func (c *Client) Messages() <-chan Message { return c.msgs }

// Subscribed reports whether the client is connected and subscribed, and
// can publish.
func (c *Client) Subscribed() bool { return c.subscribed.Load() && c.out.IsConnectionOpen() }

// Publish sends payload to topic with QoS 1 and waits for the PUBACK. A
// topic that fails ValidTopic is refused before anything is sent.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte) error {
	return c.publish(ctx, topic, false, payload)
}

// ClearRetained removes the broker's retained message on topic (an empty
// retained publish, QoS 1) and waits for the PUBACK.
func (c *Client) ClearRetained(ctx context.Context, topic string) error {
	return c.publish(ctx, topic, true, nil)
}

func (c *Client) publish(ctx context.Context, topic string, retain bool, payload []byte) error {
	if err := ValidTopic(topic); err != nil {
		return err
	}
	if c.closed.Load() {
		return ErrClosed
	}
	tok := c.out.Publish(topic, 1, retain, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("mqttin: publish %.200s: %w", topic, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
}

// credentials are the username and the password as it is now; a password
// that cannot be read is logged (once per change of cause) and sent empty,
// so the broker refuses the connection and paho retries.
func (c *Client) credentials(l *connLog) (string, string) {
	if c.cfg.Password == nil {
		return c.cfg.Username, ""
	}
	pw, err := c.cfg.Password()
	l.passwordProblem(err)
	return c.cfg.Username, pw
}

// connected subscribes on every (re)connection, retrying with backoff
// while the connection stays up and the broker refuses or does not answer;
// a lost connection gets here again when paho reconnects.
func (c *Client) connected(pc paho.Client) {
	if len(c.cfg.Subscribe) == 0 {
		c.subscribed.Store(true)
		return
	}
	filters := make(map[string]byte, len(c.cfg.Subscribe))
	for _, f := range c.cfg.Subscribe {
		filters[f] = 1
	}
	for wait := time.Second; ; wait = min(2*wait, c.cfg.MaxReconnectInterval) {
		err := subscribe(pc, filters, c.receive, c.cfg.ConnectTimeout)
		if err == nil {
			c.subscribed.Store(true)
			c.log.Info("mqttin: subscribed", "broker", c.intakeConn.broker, "topics", c.cfg.Subscribe)
			return
		}
		if !pc.IsConnectionOpen() {
			return
		}
		c.log.Error("mqttin: subscribe failed; retrying", "broker", c.intakeConn.broker, "err", err, "in", wait)
		select {
		case <-time.After(wait):
		case <-c.done:
			return
		}
	}
}

// subscribe sends one SUBSCRIBE and waits for a SUBACK granting every filter.
func subscribe(pc paho.Client, filters map[string]byte, h paho.MessageHandler, timeout time.Duration) error {
	tok := pc.SubscribeMultiple(filters, h)
	if !tok.WaitTimeout(timeout) {
		return fmt.Errorf("no SUBACK within %s", timeout)
	}
	if err := tok.Error(); err != nil {
		return err
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code >= 0x80 {
				return fmt.Errorf("broker refused %q (SUBACK code %#x)", f, code)
			}
		}
	}
	return nil
}

func (c *Client) receive(_ paho.Client, m paho.Message) {
	msg := Message{
		Topic:      m.Topic(),
		DeviceID:   DeviceID(m.Topic()),
		Payload:    m.Payload(),
		ReceivedAt: time.Now(),
		Duplicate:  m.Duplicate(),
		Retained:   m.Retained(),
		ack:        m.Ack,
	}
	select {
	case c.msgs <- msg:
	case <-c.done:
		// Stopping: leave it un-acknowledged; the broker redelivers it.
	}
}

// connLog logs the connection's state changes once each, with the cause:
// connected, lost, and failing to connect (a wrong port or an untrusted
// certificate shows as one line, not one per retry).
type connLog struct {
	log    *slog.Logger
	broker string
	name   string // which connection: intake or replies

	mu    sync.Mutex
	state connState
	pwErr string // the last password-file problem logged

	reason, detail string // why the last connection attempt failed (Problem)
}

// passwordProblem logs a password that cannot be read, once per cause.
func (l *connLog) passwordProblem(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if msg != l.pwErr && msg != "" {
		l.log.Error("mqttin: cannot read the password; connecting without it", "broker", l.broker, "conn", l.name, "err", msg)
	}
	l.pwErr = msg
}

type connState int

const (
	connNew connState = iota
	connUp
	connLost
	connFailing
)

func (l *connLog) notified(_ paho.Client, n paho.ConnectionNotification) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch n := n.(type) {
	case paho.ConnectionNotificationConnected:
		if l.state != connUp {
			l.log.Info("mqttin: connected", "broker", l.broker, "conn", l.name)
		}
		l.state = connUp
		l.reason, l.detail = "", ""
	case paho.ConnectionNotificationLost:
		if l.state != connLost {
			l.log.Warn("mqttin: connection lost; reconnecting", "broker", l.broker, "conn", l.name, "err", n.Reason)
		}
		l.state = connLost
		l.reason, l.detail = "unreachable", fmt.Sprint(n.Reason)
	case paho.ConnectionNotificationFailed:
		reason := problemOf(n.Reason)
		if l.state != connFailing || reason != l.reason {
			l.log.Warn("mqttin: cannot connect; retrying", "broker", l.broker, "conn", l.name, "reason", reason, "err", n.Reason)
		}
		l.state = connFailing
		l.reason, l.detail = reason, fmt.Sprint(n.Reason)
	}
}

// problemOf classifies why a connection attempt failed: auth (the broker
// refused the login), tls (a certificate or handshake) or unreachable.
func problemOf(err error) string {
	switch {
	case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) || errors.Is(err, packets.ErrorRefusedNotAuthorised) ||
		errors.Is(err, packets.ErrorRefusedIDRejected):
		return "auth"
	case err != nil && (strings.Contains(err.Error(), "tls:") || strings.Contains(err.Error(), "x509:") || strings.Contains(err.Error(), "certificate")):
		return "tls"
	}
	return "unreachable"
}

// Problem says why the client is not connected: a reason (auth, tls,
// unreachable) and the broker's or the handshake's error; "" while
// connected. No secret is in either.
func (c *Client) Problem() (reason, detail string) {
	for _, l := range []*connLog{&c.intakeConn, &c.outConn} {
		l.mu.Lock()
		reason, detail = l.reason, l.detail
		l.mu.Unlock()
		if reason != "" {
			return reason, detail
		}
	}
	return "", ""
}

// redacted is the broker URL without a password, for logs.
func redacted(broker string) string {
	u, err := url.Parse(broker)
	if err != nil {
		return "(unparsable broker URL)"
	}
	return u.Redacted()
}

// FilterMatches reports whether the MQTT topic filter (+ one level, # the
// rest) matches topic.
func FilterMatches(filter, topic string) bool {
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, level := range f {
		switch {
		case level == "#":
			return true
		case i >= len(t) || (level != "+" && level != t[i]):
			return false
		}
	}
	return len(f) == len(t)
}

// DeviceID returns the last level of topic.
func DeviceID(topic string) string {
	return topic[strings.LastIndexByte(topic, '/')+1:]
}

// ReplyTopic expands {device_id} in pattern.
func ReplyTopic(pattern, deviceID string) string {
	return strings.ReplaceAll(pattern, "{device_id}", deviceID)
}
