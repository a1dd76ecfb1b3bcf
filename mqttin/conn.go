package mqttin

import (
	"bufio"
	"errors"
	"net"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// maxPendingWrite bounds the bytes queued on a connection before Write blocks.
const maxPendingWrite = 1 << 20

// errConnClosed is returned by Write after Close.
var errConnClosed = errors.New("mqttin: connection closed")

// coalescingConn cuts the system calls of a busy MQTT connection. paho
// reads each packet in three or more small reads and writes each packet
// (every PUBACK, every reply) with a write of its own. Here reads go
// through a bufio.Reader, and writes are queued and written by one flusher
// goroutine, so packets queued while a write is in progress leave together
// in the next one. Nothing waits for a batch to fill: a packet written to an
// idle connection goes out at once.
//
// Delivery semantics do not change: paho treats a QoS 1 publish as done
// only when its PUBACK arrives, and a PUBACK lost with the connection makes
// the broker redeliver the message.
type coalescingConn struct {
	net.Conn
	r            *bufio.Reader
	writeTimeout time.Duration

	mu       sync.Mutex
	cond     *sync.Cond // signalled when the queue shrinks or the flusher stops
	pending  []byte     // queued, not yet handed to the kernel
	spare    []byte
	writing  bool  // the flusher holds a batch
	err      error // first write error, or errConnClosed
	kick     chan struct{}
	done     chan struct{} // closed by Close: the flusher stops
	stopped  chan struct{} // closed when the flusher stopped
	closeOne sync.Once
}

func newCoalescingConn(c net.Conn, writeTimeout time.Duration) *coalescingConn {
	cc := &coalescingConn{
		Conn: c, r: bufio.NewReaderSize(c, 64<<10), writeTimeout: writeTimeout,
		kick: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{}),
	}
	cc.cond = sync.NewCond(&cc.mu)
	go cc.flusher()
	return cc
}

func (c *coalescingConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Write queues p; it blocks only while more than maxPendingWrite bytes are
// queued. A failed write is reported by the next Write.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && len(c.pending) > maxPendingWrite {
		c.cond.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	c.pending = append(c.pending, p...)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return len(p), nil
}

// SetWriteDeadline is ignored: the flusher sets its own deadline on each write.
func (c *coalescingConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline applies to reads only, for the same reason.
func (c *coalescingConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

func (c *coalescingConn) flusher() {
	defer close(c.stopped)
	for {
		select {
		case <-c.kick:
		case <-c.done:
			return
		}
		c.mu.Lock()
		buf := c.pending
		c.pending, c.writing = c.spare[:0], len(buf) > 0
		c.mu.Unlock()
		var err error
		if len(buf) > 0 {
			if c.writeTimeout > 0 {
				_ = c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
			}
			_, err = c.Conn.Write(buf)
		}
		c.mu.Lock()
		c.spare, c.writing = buf[:0], false
		if err != nil && c.err == nil {
			c.err = err
		}
		failed := c.err != nil
		more := len(c.pending) > 0
		c.cond.Broadcast()
		c.mu.Unlock()
		if failed {
			return
		}
		if more {
			select {
			case c.kick <- struct{}{}:
			default:
			}
		}
	}
}

// Close writes what is queued (a DISCONNECT, typically), waiting at most
// the write timeout, then closes the connection.
func (c *coalescingConn) Close() error {
	c.closeOne.Do(func() {
		deadline := time.Now().Add(max(c.writeTimeout, time.Second))
		c.mu.Lock()
		for c.err == nil && (len(c.pending) > 0 || c.writing) && time.Now().Before(deadline) {
			// Wake up at the deadline even if the flusher is stuck.
			t := time.AfterFunc(time.Until(deadline), c.cond.Broadcast)
			c.cond.Wait()
			t.Stop()
		}
		if c.err == nil {
			c.err = errConnClosed
		}
		c.cond.Broadcast()
		c.mu.Unlock()
		close(c.done)
	})
	err := c.Conn.Close()
	<-c.stopped
	return err
}

// openConn dials tcp:// and mqtt:// brokers with a coalescingConn. Other
// schemes are left to paho (openConn is only installed for these).
func openConn(timeout time.Duration) paho.OpenConnectionFunc {
	return func(uri *url.URL, opts paho.ClientOptions) (net.Conn, error) {
		d := opts.Dialer
		if d == nil {
			d = &net.Dialer{Timeout: timeout}
		}
		c, err := proxy.FromEnvironmentUsing(d).Dial("tcp", uri.Host) // as paho does
		if err != nil {
			return nil, err
		}
		return newCoalescingConn(c, opts.WriteTimeout), nil
	}
}
