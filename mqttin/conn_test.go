package mqttin

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestCoalescingConnKeepsOrderAndFlushesOnClose(t *testing.T) {
	client, server := tcpPair(t)
	c := newCoalescingConn(client, 5*time.Second)
	var want bytes.Buffer
	var wg sync.WaitGroup
	var mu sync.Mutex // writers take turns, as paho's single writer does
	for w := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				p := []byte{byte(w), byte(i), byte(i >> 8), '\n'}
				mu.Lock()
				want.Write(p)
				_, err := c.Write(p)
				mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("peer got %d bytes, want %d in write order", len(got), want.Len())
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, errConnClosed) {
		t.Fatalf("write after close: %v, want errConnClosed", err)
	}
}

func TestCoalescingConnReadsThroughBuffer(t *testing.T) {
	client, server := tcpPair(t)
	c := newCoalescingConn(client, time.Second)
	defer c.Close()
	if _, err := server.Write([]byte("hello world")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "hello" {
		t.Fatalf("read %q, %v", b, err)
	}
	if _, err := io.ReadFull(c, b[:1]); err != nil || b[0] != ' ' {
		t.Fatalf("read %q, %v", b[:1], err)
	}
}

// A peer that stops reading fills the socket and the queue: Write blocks
// instead of queueing without bound, and Close gives up after the write
// timeout and releases it with an error.
func TestCoalescingConnBoundsTheQueue(t *testing.T) {
	client, _ := tcpPair(t) // the server end is never read
	c := newCoalescingConn(client, 300*time.Millisecond)
	chunk := make([]byte, 64<<10)
	blocked := make(chan error, 1)
	go func() {
		for {
			if _, err := c.Write(chunk); err != nil {
				blocked <- err
				return
			}
		}
	}()
	select {
	case err := <-blocked:
		// The flusher's write timed out first: the error surfaces on Write.
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("write failed with %v, want the flusher's timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writes to a peer that never reads neither blocked nor failed")
	}
	c.mu.Lock()
	queued := len(c.pending)
	c.mu.Unlock()
	if queued > maxPendingWrite+len(chunk) {
		t.Fatalf("%d bytes queued, bound is %d", queued, maxPendingWrite)
	}
	c.Close()
}
