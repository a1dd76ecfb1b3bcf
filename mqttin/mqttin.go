// Package mqttin is edgebridge's MQTT hop: it subscribes to device request
// topics with QoS 1 on a persistent session and hands each message to the
// pipeline in arrival order; the PUBACK is sent only when the pipeline calls
// Message.Ack (after Kafka acknowledged the write). It also publishes replies
// to devices with QoS 1.
package mqttin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// ErrClosed is returned by Publish after the client stopped.
var ErrClosed = errors.New("mqttin: client closed")

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
}

func (c Config) withDefaults() Config {
	if c.QueueSize <= 0 {
		c.QueueSize = 4096
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 30 * time.Second
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.MaxReconnectInterval <= 0 {
		c.MaxReconnectInterval = 10 * time.Second
	}
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
	m          paho.Message
}

// Ack sends the PUBACK for m.
func (m Message) Ack() {
	if m.m != nil {
		m.m.Ack()
	}
}

// Client is safe for concurrent use.
type Client struct {
	cfg    Config
	log    *slog.Logger
	c      paho.Client
	msgs   chan Message
	done   chan struct{}
	closed atomic.Bool

	subscribed atomic.Bool
}

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
	po := paho.NewClientOptions().
		AddBroker(cfg.Broker).
		SetClientID(cfg.ClientID).
		SetCleanSession(false).
		SetAutoAckDisabled(true).
		// The handler only enqueues (in order); it blocks only when the queue
		// is full, i.e. when Kafka cannot keep up: then the broker holds back.
		SetOrderMatters(true).
		SetKeepAlive(cfg.KeepAlive).
		SetPingTimeout(cfg.KeepAlive / 2).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(cfg.MaxReconnectInterval).
		SetWriteTimeout(cfg.ConnectTimeout).
		SetResumeSubs(true).
		// Messages of a resumed session can arrive before SUBSCRIBE is
		// re-sent; without a default handler paho would drop them un-acked.
		SetDefaultPublishHandler(c.receive).
		SetOnConnectHandler(c.connected).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			c.subscribed.Store(false)
			c.log.Warn("mqttin: connection lost", "broker", cfg.Broker, "err", err)
		})
	if u, err := url.Parse(cfg.Broker); err == nil && (u.Scheme == "tcp" || u.Scheme == "mqtt") {
		po.SetCustomOpenConnectionFn(openConn)
	}
	c.c = paho.NewClient(po)
	for _, f := range cfg.Subscribe {
		c.c.AddRoute(f, c.receive)
	}
	return c, nil
}

// Run connects (retrying until it succeeds) and keeps the session until ctx
// ends; then it disconnects, leaving the broker's session in place so queued
// messages wait for the next run. Messages received and not acknowledged are
// redelivered by the broker then.
func (c *Client) Run(ctx context.Context) error {
	tok := c.c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("mqttin: connect %s: %w", c.cfg.Broker, err)
		}
	case <-ctx.Done():
	}
	<-ctx.Done()
	c.Close()
	return nil
}

// Close disconnects. Safe to call more than once.
func (c *Client) Close() {
	if c.closed.CompareAndSwap(false, true) {
		close(c.done)
		c.subscribed.Store(false)
		c.c.Disconnect(250)
	}
}

// Messages returns the received messages in arrival order.
func (c *Client) Messages() <-chan Message { return c.msgs }

// Subscribed reports whether the client is connected and subscribed.
func (c *Client) Subscribed() bool { return c.subscribed.Load() }

// Publish sends payload to topic with QoS 1 and waits for the PUBACK.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte) error {
	if c.closed.Load() {
		return ErrClosed
	}
	tok := c.c.Publish(topic, 1, false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("mqttin: publish %s: %w", topic, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
}

func (c *Client) connected(pc paho.Client) {
	if len(c.cfg.Subscribe) > 0 {
		filters := make(map[string]byte, len(c.cfg.Subscribe))
		for _, f := range c.cfg.Subscribe {
			filters[f] = 1
		}
		tok := pc.SubscribeMultiple(filters, c.receive)
		if tok.WaitTimeout(c.cfg.ConnectTimeout) && tok.Error() == nil {
			c.subscribed.Store(true)
			c.log.Info("mqttin: subscribed", "broker", c.cfg.Broker, "topics", c.cfg.Subscribe)
		} else {
			c.log.Error("mqttin: subscribe failed; reconnecting", "err", tok.Error())
			// Force a reconnect so the subscription is retried.
			go pc.Disconnect(0)
			return
		}
	} else {
		c.subscribed.Store(true)
	}
}

func (c *Client) receive(_ paho.Client, m paho.Message) {
	msg := Message{
		Topic:      m.Topic(),
		DeviceID:   DeviceID(m.Topic()),
		Payload:    m.Payload(),
		ReceivedAt: time.Now(),
		Duplicate:  m.Duplicate(),
		m:          m,
	}
	select {
	case c.msgs <- msg:
	case <-c.done:
		// Stopping: leave it un-acknowledged; the broker redelivers it.
	}
}

// DeviceID returns the last level of topic.
func DeviceID(topic string) string {
	return topic[strings.LastIndexByte(topic, '/')+1:]
}

// ReplyTopic expands {device_id} in pattern.
func ReplyTopic(pattern, deviceID string) string {
	return strings.ReplaceAll(pattern, "{device_id}", deviceID)
}
