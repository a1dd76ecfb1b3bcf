package mqttin

import (
	"errors"
	"io"
	"net"
	"net/url"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// Bytes the buffer read ahead are handed out in order, a read deadline
// still ends a read that waits for the network, and writes go through.
func TestBufferedConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		s.Write([]byte("hello world"))
		b, _ := io.ReadAll(s)
		got <- b
	}()
	u, _ := url.Parse("tcp://" + ln.Addr().String())
	c, err := openConn(u, *paho.NewClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	if _, err := io.ReadFull(c, b[:5]); err != nil || string(b[:5]) != "hello" {
		t.Fatalf("read %q, %v", b[:5], err)
	}
	if _, err := io.ReadFull(c, b); err != nil || string(b) != " world" {
		t.Fatalf("read %q, %v", b, err)
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var ne net.Error
	if _, err := c.Read(b); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the data: %v, want a timeout", err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.Close()
	if b := <-got; string(b) != "ping" {
		t.Fatalf("peer got %q", b)
	}
}
