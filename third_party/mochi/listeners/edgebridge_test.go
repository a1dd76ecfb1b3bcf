package listeners

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// syncBuffer is a log sink many goroutines write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// edgebridge: a connection the server closed (at its shutdown) is not
// warned about; one that ended with another error is, with a message.
func TestEdgebridgeConnectionEnded(t *testing.T) {
	var out syncBuffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	connectionEnded(log, nil)
	connectionEnded(log, &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed})
	require.Empty(t, out.String())
	connectionEnded(log, fmt.Errorf("client misbehaved"))
	require.Contains(t, out.String(), `msg="client connection ended" error="client misbehaved"`)
}

// edgebridge: connections ending at once each report their own error (run
// with -race: upstream wrote one shared err from every connection's
// goroutine).
func TestEdgebridgeServeConnectionErrors(t *testing.T) {
	var out syncBuffer
	l := NewTCP(Config{ID: "t1", Address: "127.0.0.1:0"})
	require.NoError(t, l.Init(slog.New(slog.NewTextHandler(&out, nil))))
	const conns = 20
	go l.Serve(func(id string, c net.Conn) error {
		defer c.Close()
		buf := make([]byte, 1)
		if _, err := c.Read(buf); err != nil {
			return err
		}
		if buf[0] == 'c' { // the server closes it, as at its shutdown
			c.Close()
			_, err := c.Read(buf)
			return err
		}
		return fmt.Errorf("client %c misbehaved", buf[0])
	})
	for i := 0; i < conns; i++ {
		c, err := net.Dial("tcp", l.listen.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte{byte('a' + i%2*2)}) // "a" or "c"
		require.NoError(t, err)
	}
	misbehaved := func() int {
		return strings.Count(out.String(), `msg="client connection ended" error="client a misbehaved"`)
	}
	require.Eventually(t, func() bool { return misbehaved() == conns/2 }, 10*time.Second, 5*time.Millisecond, out.String())
	l.Close(MockCloser)
}
