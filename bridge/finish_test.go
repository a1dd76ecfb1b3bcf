package bridge_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
)

// A reply publish waits for the broker's PUBACK before its record is ACKed.
// With the broker's PUBACKs to the bridge held back, the bridge still
// publishes the reply of every request the backend answered: replies in
// flight are bounded by the window, not by a small pool of finishers (8
// finishers capped the pipeline at ~8k msg/s). Released, every reply
// completes.
func TestRepliesInFlightUpToWindow(t *testing.T) {
	leakCheck(t)
	const requests = 40
	p := newPipeline(t, func(_ context.Context, env *v1.Envelope) backend.Result { return approve(env) })
	proxy := newPubackGate(t, p.MQTT.Addr())
	t.Cleanup(proxy.close) // after the bridge stops
	p.Config.MQTT.Broker = "tcp://" + proxy.addr()
	if p.Config.Backend.Window < requests {
		t.Fatalf("window %d: the test needs at least %d", p.Config.Backend.Window, requests)
	}
	p.StartTest(t)
	replies := make(chan []byte, requests)
	dev := device(t, p, "dev-1", replies)

	proxy.hold()
	for i := range requests {
		dev.Publish("payment/request/dev-1", 1, false, fmt.Sprintf(`{"request_id":"r-%d","amount_minor":100,"currency":"EUR"}`, i)).Wait()
	}
	// Every reply is published while none of them has been acknowledged.
	waitUntil(t, fmt.Sprintf("%d reply publishes with their PUBACKs held", requests), func() bool { return proxy.publishes() == requests })
	proxy.release()
	for range requests {
		select {
		case <-replies:
		case <-time.After(30 * time.Second):
			t.Fatal("replies did not all arrive after the PUBACKs were released")
		}
	}
}

// pubackGate is a TCP proxy in front of an MQTT broker for one client. It
// counts the PUBLISH packets the client sends, and while held it keeps back
// the PUBACKs the broker sends the client (everything else passes).
type pubackGate struct {
	ln     net.Listener
	broker string
	wg     sync.WaitGroup

	mu       sync.Mutex
	held     bool
	queue    [][]byte
	client   net.Conn
	upstream net.Conn
	sent     int
}

func newPubackGate(t *testing.T, broker string) *pubackGate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &pubackGate{ln: ln, broker: broker}
	g.wg.Go(g.accept)
	return g
}

func (g *pubackGate) addr() string { return g.ln.Addr().String() }

func (g *pubackGate) accept() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", g.broker)
		if err != nil {
			c.Close()
			continue
		}
		g.mu.Lock()
		g.client, g.upstream = c, up
		g.mu.Unlock()
		g.wg.Go(func() { g.pipe(c, up, g.countPublish) })
		g.wg.Go(func() { g.pipe(up, c, g.holdPuback) })
	}
}

// pipe copies MQTT packets from src to dst; pass decides per packet
// whether to write it now (false: the gate keeps it).
func (g *pubackGate) pipe(src, dst net.Conn, pass func([]byte) bool) {
	defer src.Close()
	defer dst.Close()
	r := bufio.NewReader(src)
	for {
		pkt, err := readPacket(r)
		if err != nil {
			return
		}
		g.mu.Lock()
		ok := pass(pkt)
		g.mu.Unlock()
		if ok {
			if _, err := dst.Write(pkt); err != nil {
				return
			}
		}
	}
}

func (g *pubackGate) countPublish(pkt []byte) bool {
	if pkt[0]>>4 == 3 {
		g.sent++
	}
	return true
}

func (g *pubackGate) holdPuback(pkt []byte) bool {
	if pkt[0]>>4 == 4 && g.held {
		g.queue = append(g.queue, pkt)
		return false
	}
	return true
}

func (g *pubackGate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = true
}

func (g *pubackGate) publishes() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sent
}

// release writes the held PUBACKs in order and lets the next ones through.
func (g *pubackGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = false
	for _, pkt := range g.queue {
		if _, err := g.client.Write(pkt); err != nil {
			return
		}
	}
	g.queue = nil
}

func (g *pubackGate) close() {
	g.ln.Close()
	g.mu.Lock()
	for _, c := range []net.Conn{g.client, g.upstream} {
		if c != nil {
			c.Close()
		}
	}
	g.mu.Unlock()
	g.wg.Wait()
}

// readPacket reads one MQTT control packet: the fixed header (type byte and
// a variable-length remaining length) and its body.
func readPacket(r *bufio.Reader) ([]byte, error) {
	first, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	pkt := []byte{first}
	length, shift := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		pkt = append(pkt, b)
		length |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
		if shift += 7; shift > 21 {
			return nil, errors.New("mqtt: malformed remaining length")
		}
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(pkt, body...), nil
}
