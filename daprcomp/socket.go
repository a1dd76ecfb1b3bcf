package daprcomp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// socketMode lets the owner and the group connect (daprd runs as either).
const socketMode = 0o660

// ErrSocketInUse is returned when another process serves the socket path.
var ErrSocketInUse = errors.New("daprcomp: socket is served by another process")

type socket struct {
	l    net.Listener
	path string
	fi   os.FileInfo // the file we created, so we never remove someone else's
}

// listen creates the Unix socket at path with socketMode. A stale socket
// file (nobody answers on it) is replaced; a live one is an error, as is a
// file that is not a socket. The socket is created in a private directory,
// given its mode, then renamed into place, so nobody can connect before the
// mode is set and daprd never discovers a half-made socket.
func listen(path string) (*socket, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("daprcomp: socket folder: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".edgebridge-")
	if err != nil {
		return nil, fmt.Errorf("daprcomp: socket folder: %w", err)
	}
	defer os.RemoveAll(tmp)
	tmpPath := filepath.Join(tmp, "s.sock")
	l, err := net.Listen("unix", tmpPath)
	if err != nil {
		return nil, fmt.Errorf("daprcomp: listen: %w", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false) // the path changes; we remove it ourselves
	fail := func(err error) (*socket, error) {
		l.Close()
		return nil, fmt.Errorf("daprcomp: socket %s: %w", path, err)
	}
	if err := os.Chmod(tmpPath, socketMode); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmpPath, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &socket{l: l, path: path, fi: fi}, nil
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("daprcomp: socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("daprcomp: %s exists and is not a socket; not replacing it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s", ErrSocketInUse, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("daprcomp: remove stale socket %s: %w", path, err)
	}
	return nil
}

// remove closes the listener and deletes the socket file if it is still
// the one listen created.
func (s *socket) remove() {
	s.l.Close()
	if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.fi) {
		os.Remove(s.path)
	}
}
