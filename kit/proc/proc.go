// Package proc runs the child processes of the integration tests, the
// deploy tests and the bench: the edgebridge and paymentd binaries,
// Mosquitto, scripts. A Process keeps the tail of its output and dies with
// the process that started it; a Bridge is `edgebridge run` with its admin
// server (readiness, metrics); BridgeConfig is the YAML they run with.
//
// Nothing here knows about testing.T: tests wrap it with their own
// Fatal-on-error helpers, the bench returns the errors.
package proc

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/edgebridge/edgebridge/internal/syncbuf"
)

// OutputMax is how much of a process's output (stdout and stderr
// together) a Process keeps: the last bytes written.
const OutputMax = 4 << 20

// Process is a child process and what it wrote.
type Process struct {
	Name string

	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
	err  error
}

// Start runs bin with args; env adds KEY=value entries to this process's
// environment. The child is killed if this process dies.
func Start(env []string, bin string, args ...string) (*Process, error) {
	p := &Process{Name: filepath.Base(bin), cmd: exec.Command(bin, args...), out: &syncbuf.Buffer{Max: OutputMax}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test or bench
	// A child the process left behind (a script's) may hold the output
	// pipe: Wait gives up on it this long after the process exits.
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.Name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// PID is the process's id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Output is what the process wrote so far (its last OutputMax bytes).
func (p *Process) Output() string { return p.out.String() }

// Signal sends sig to the process (by its PID).
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process exited; valid once Done is closed.
func (p *Process) Err() error { return p.err }

// Exited is nil while the process runs; once it has exited, an error
// saying how, with the tail of its output.
func (p *Process) Exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v\n%s", p.Name, p.err, Tail(p.Output(), 3000))
	default:
		return nil
	}
}

// Kill sends SIGKILL and waits for the exit.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to limit for the exit, then kills the
// process. It returns how the process exited, or that it did not in time.
func (p *Process) Stop(limit time.Duration) error {
	_ = p.Signal(syscall.SIGTERM)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.err
	case <-timer.C:
		p.Kill()
		return fmt.Errorf("%s did not exit within %s after SIGTERM", p.Name, limit)
	}
}

// Tail is the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// FreePort is a loopback port nothing listens on now.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr is FreePort's address.
func FreeAddr() (string, error) {
	port, err := FreePort()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), err
}

// FreeAddrs is n different loopback addresses nothing listens on now, for
// one process's listeners: FreeAddr called n times can hand out the same
// port twice (the kernel reuses a port closed a moment ago).
func FreeAddrs(n int) ([]string, error) {
	addrs := make([]string, n)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close() // held until all n are taken
		addrs[i] = ln.Addr().String()
	}
	return addrs, nil
}

// Dial is nil when addr accepts a TCP connection.
func Dial(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err
}
