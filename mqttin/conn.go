package mqttin

import (
	"bufio"
	"net"
	"net/url"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// bufferedConn reads through a bufio.Reader. paho reads every packet in
// three or more small reads (fixed header, each length byte, the rest),
// each a system call on a bare connection; under load one read now takes
// many packets at once. paho reads from one goroutine at a time (the
// handshake, then its reader), as a bufio.Reader needs. Writes are untouched.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// openConn dials tcp:// and mqtt:// brokers as paho does (its Dialer,
// proxies from the environment), with a bufferedConn. Other schemes are left
// to paho: openConn is only installed for these.
func openConn(uri *url.URL, opts paho.ClientOptions) (net.Conn, error) {
	c, err := proxy.FromEnvironmentUsing(opts.Dialer).Dial("tcp", uri.Host)
	if err != nil {
		return nil, err
	}
	return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, 32<<10)}, nil
}
