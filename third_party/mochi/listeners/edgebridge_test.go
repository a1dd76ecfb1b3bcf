package listeners

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

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

// edgebridge: connections ending at once each report their own error (run
// with -race: upstream wrote one shared err from every connection's
// goroutine), and a connection the server closed is not warned about.
func TestEdgebridgeServeConnectionErrors(t *testing.T) {
	var out syncBuffer
	l := NewTCP(Config{ID: "t1", Address: "127.0.0.1:0"})
	require.NoError(t, l.Init(slog.New(slog.NewTextHandler(&out, nil))))
	const conns = 20
	var ended sync.WaitGroup
	ended.Add(conns)
	go l.Serve(func(id string, c net.Conn) error {
		defer ended.Done()
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
		b := byte('a' + i%2*2) // "a" or "c"
		_, err = c.Write([]byte{b})
		require.NoError(t, err)
	}
	ended.Wait()
	l.Close(MockCloser)
	require.Equal(t, conns/2, strings.Count(out.String(), `msg="client connection ended" error="client a misbehaved"`), out.String())
	require.NotContains(t, out.String(), "use of closed network connection")
}
