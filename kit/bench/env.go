package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	mosquittoconf "github.com/edgebridge/edgebridge/deploy/mosquitto"
	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/kit/proc"
	"github.com/edgebridge/edgebridge/kit/testpki"
	"github.com/edgebridge/edgebridge/payment"
)

// env is everything a run measures: the brokers, paymentd and the bridge.
// Processes it starts are stopped by their PIDs in close.
type env struct {
	dir     string
	mqttURL string
	brokers []string
	admin   string
	bridge  *proc.Bridge
	mosq    *proc.Process // nil unless Mosquitto was started here
	kafka   *proc.Process // nil unless the embedded broker was started here
	mqttIn  *embedded.MQTT
	pay     *grpc.Server
	ledger  *payment.Ledger
	payAddr string
	hops    *hops     // paymentd's; shared with the shipped node's env
	tls     *benchTLS // nil: plain TCP

	stackOnce, payOnce sync.Once
}

// benchTLS is a throwaway CA and the brokers' certificate it signed.
type benchTLS struct {
	caFile, certFile, keyFile string
	client                    *tls.Config // trusts the CA
}

func newBenchTLS(dir string) (*benchTLS, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ca, err := testpki.NewCA("edgebridge bench")
	if err != nil {
		return nil, err
	}
	caFile, err := ca.WriteCA(dir, "ca")
	if err != nil {
		return nil, err
	}
	c, k, err := ca.Server("brokers")
	if err != nil {
		return nil, err
	}
	cert, key, err := testpki.WritePair(dir, "server", c, k)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.PEM)
	return &benchTLS{caFile: caFile, certFile: cert, keyFile: key, client: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}, nil
}

// hops records, for each request paymentd handles, the time since the
// bridge received it over MQTT (the envelope's received_at): the middle
// of the path, MQTT -> Kafka -> gRPC. Same host, same clock.
type hops struct {
	mu  sync.Mutex
	lat []time.Duration
}

func (h *hops) add(env *v1.Envelope) {
	d := time.Since(time.Unix(0, env.GetReceivedAtUnixNano()))
	h.mu.Lock()
	h.lat = append(h.lat, d)
	h.mu.Unlock()
}

// take returns what was recorded since the last take.
func (h *hops) take() []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.lat
	h.lat = nil
	return l
}

// startEnv starts what cfg asks for; on error everything already started
// is stopped.
func startEnv(ctx context.Context, cfg Config, withTLS bool) (_ *env, err error) {
	e := &env{dir: cfg.Dir, hops: &hops{}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if withTLS {
		if e.tls, err = newBenchTLS(filepath.Join(cfg.Dir, "certs")); err != nil {
			return e, err
		}
	}
	if err := e.startMQTT(ctx, cfg.MQTT); err != nil {
		return e, err
	}
	if err := e.startKafka(ctx, cfg.Kafka, cfg.NoFsync, cfg.Bridge); err != nil {
		return e, err
	}
	if err := e.startPaymentd(cfg.NoFsync); err != nil {
		return e, err
	}
	return e, e.startBridge(ctx, cfg)
}

func (e *env) startMQTT(ctx context.Context, kind string) error {
	switch {
	case kind == "mosquitto":
		bin, err := exec.LookPath("mosquitto")
		if err != nil {
			return errors.New("bench: mosquitto not on PATH (apt-get install -y mosquitto), or use -mqtt embedded")
		}
		port, err := proc.FreePort()
		if err != nil {
			return err
		}
		dir := filepath.Join(e.dir, "mosquitto")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		settings, scheme := mosquittoconf.Local(port, dir), "tcp://"
		if e.tls != nil {
			listener := "listener " + strconv.Itoa(port) + " 127.0.0.1\n"
			settings = strings.Replace(settings, listener, listener+"certfile "+e.tls.certFile+"\nkeyfile "+e.tls.keyFile+"\n", 1)
			scheme = "ssl://"
		}
		conf := filepath.Join(dir, "mosquitto.conf")
		if err := os.WriteFile(conf, []byte(settings), 0o644); err != nil {
			return err
		}
		if e.mosq, err = proc.Start(nil, bin, "-c", conf); err != nil {
			return err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		e.mqttURL = scheme + addr
		return await.Cond(ctx, 10*time.Second, "mosquitto", func() error {
			if err := e.mosq.Exited(); err != nil {
				return await.Final(err)
			}
			return proc.Dial(addr)
		})
	case kind == "embedded":
		m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: "127.0.0.1:0", DataDir: filepath.Join(e.dir, "mqtt")})
		if err != nil {
			return err
		}
		e.mqttIn = m
		e.mqttURL = "tcp://" + m.Addr()
		return nil
	case strings.HasPrefix(kind, "tcp://"):
		e.mqttURL = kind
		return proc.Dial(strings.TrimPrefix(kind, "tcp://"))
	default:
		return fmt.Errorf("bench: -mqtt %q: want mosquitto, embedded or tcp://host:port", kind)
	}
}

// startKafka runs the embedded broker as its own process (so the bridge's
// figures are the bridge's alone), or uses the brokers given.
func (e *env) startKafka(ctx context.Context, kind string, noFsync bool, bin string) error {
	if kind != "embedded" {
		e.brokers = strings.Split(kind, ",")
		return await.Cond(ctx, 10*time.Second, "kafka "+kind, func() error { return proc.Dial(e.brokers[0]) })
	}
	port, err := proc.FreePort()
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{"broker", "kafka", "-listen", addr, "-data", filepath.Join(e.dir, "kafka"), "-fsync=" + strconv.FormatBool(!noFsync)}
	if e.tls != nil {
		args = append(args, "-tls-cert", e.tls.certFile, "-tls-key", e.tls.keyFile)
	}
	if e.kafka, err = proc.Start(nil, bin, args...); err != nil {
		return err
	}
	e.kafka.Name = "kafka broker"
	e.brokers = []string{addr}
	return await.Cond(ctx, 30*time.Second, "kafka broker", func() error {
		if err := e.kafka.Exited(); err != nil {
			return await.Final(err)
		}
		return proc.Dial(addr)
	})
}

// startPaymentd serves the reference backend in this process.
func (e *env) startPaymentd(noFsync bool) error {
	var opts []payment.LedgerOption
	if noFsync {
		opts = append(opts, payment.NoFsync())
	}
	var err error
	if e.ledger, err = payment.OpenLedger(filepath.Join(e.dir, "ledger.jsonl"), opts...); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	e.pay = backend.NewGRPCServer()
	pay := payment.Handler(payment.DefaultLimit)
	handle := func(ctx context.Context, env *v1.Envelope) backend.Result {
		e.hops.add(env)
		return pay(ctx, env)
	}
	backend.NewServer(backend.Config{ID: "paymentd-bench"}, handle, e.ledger).Register(e.pay)
	go func() { _ = e.pay.Serve(ln) }()
	e.payAddr = ln.Addr().String()
	return nil
}

// startBridge runs `edgebridge run` with the product's defaults, pointed at
// the brokers and paymentd, and waits for /readyz.
func (e *env) startBridge(ctx context.Context, cfg Config) error {
	port, err := proc.FreePort()
	if err != nil {
		return err
	}
	bc := proc.BridgeConfig{MQTT: e.mqttURL, ClientID: "edgebridge-bench", Kafka: e.brokers, DataDir: filepath.Join(e.dir, "bridge-data"),
		Backend: e.payAddr, Admin: "127.0.0.1:" + strconv.Itoa(port), MQTTExtra: tlsSection(e.tls), KafkaExtra: tlsSection(e.tls),
		AdminExtra: fmt.Sprintf("  pprof: %t\n", cfg.ProfileDir != ""), Top: cfg.BridgeConfig}
	path := filepath.Join(e.dir, "edgebridge.yaml")
	if err := bc.Write(path); err != nil {
		return err
	}
	e.admin = bc.Admin
	e.bridge, err = proc.StartBridge(ctx, 60*time.Second, nil, cfg.Bridge, path, bc.Admin)
	return err
}

// tlsSection is the bridge's "tls:" setting trusting the bench's CA.
func tlsSection(t *benchTLS) string {
	if t == nil {
		return ""
	}
	return "  tls: {enabled: true, ca_file: " + t.caFile + "}\n"
}

// goroutines reads go_goroutines from the bridge's /metrics.
func (e *env) goroutines() (int, error) {
	v, err := e.bridge.Metric("go_goroutines")
	return int(v), err
}

// profile writes the bridge's CPU and allocation profiles over the next
// d, as <prefix>cpu.pprof and <prefix>allocs.pprof in dir, and this
// process's CPU profile over the same time (the simulated devices and
// paymentd) as <prefix>bench-cpu.pprof.
// In the middle of d it also takes the bridge's execution trace of
// traceFor at most (<prefix>trace.out, for go tool trace: where a request
// waited, for a core, a lock, a system call), which costs it a few %
// meanwhile.
func (e *env) profile(dir, prefix string, d time.Duration) error {
	client := &http.Client{Timeout: d + 30*time.Second} // the CPU profile takes d
	get := func(path, file string) error {
		resp, err := client.Get("http://" + e.admin + path)
		if err != nil {
			return fmt.Errorf("bench: profile: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("bench: profile %s: %s", path, resp.Status)
		}
		f, err := os.Create(filepath.Join(dir, prefix+file))
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, resp.Body); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	own, err := os.Create(filepath.Join(dir, prefix+"bench-cpu.pprof"))
	if err != nil {
		return err
	}
	defer own.Close()
	if err := pprof.StartCPUProfile(own); err != nil {
		return fmt.Errorf("bench: profile: %w", err)
	}
	traced := make(chan error, 1)
	go func() {
		span := min(traceFor, d)
		mid := time.NewTimer((d - span) / 2)
		defer mid.Stop()
		<-mid.C
		traced <- get(fmt.Sprintf("/debug/pprof/trace?seconds=%g", span.Seconds()), "trace.out")
	}()
	// The allocations made during d alone (a delta profile), not since
	// the bridge started.
	secs := max(int(d.Seconds()), 1)
	allocs := make(chan error, 1)
	go func() { allocs <- get(fmt.Sprintf("/debug/pprof/allocs?seconds=%d", secs), "allocs.pprof") }()
	err = get(fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), "cpu.pprof")
	pprof.StopCPUProfile()
	err = errors.Join(err, <-traced, <-allocs)
	if err != nil {
		return err
	}
	return own.Close()
}

// traceFor is how long profile traces the bridge.
const traceFor = 2 * time.Second

// stopStack stops the brokers and the bridge, not paymentd; once.
func (e *env) stopStack() {
	e.stackOnce.Do(func() {
		if e.bridge != nil {
			_ = e.bridge.Stop(30 * time.Second)
		}
		if e.kafka != nil {
			_ = e.kafka.Stop(10 * time.Second)
		}
		if e.mosq != nil {
			_ = e.mosq.Stop(10 * time.Second)
		}
		if e.mqttIn != nil {
			e.mqttIn.Close()
		}
	})
}

// close stops everything it started; safe to call more than once.
func (e *env) close() {
	e.stopStack()
	e.payOnce.Do(func() {
		if e.pay != nil {
			e.pay.Stop()
		}
		if e.ledger != nil {
			e.ledger.Close()
		}
	})
}

// procStat is a process's CPU time and memory, from /proc.
type procStat struct {
	CPU     time.Duration // user + system
	RSS     int64         // resident now
	Anon    int64         // resident and anonymous now: not the binary's pages
	PeakRSS int64         // high-water mark since start
}

// clockTick is USER_HZ, 100 on every Linux this runs on.
const clockTick = 10 * time.Millisecond

func readProcStat(pid int) (procStat, error) {
	var s procStat
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, errors.New("bench: malformed /proc stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return s, errors.New("bench: short /proc stat")
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64) // field 14 of stat
	stime, _ := strconv.ParseInt(f[12], 10, 64) // field 15
	s.CPU = time.Duration(utime+stime) * clockTick
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for line := range strings.Lines(string(status)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			s.RSS = kb << 10
		case "VmHWM":
			s.PeakRSS = kb << 10
		case "RssAnon":
			s.Anon = kb << 10
		}
	}
	return s, nil
}

// startShippedEnv runs the node as shipped (`edgebridge run`, both brokers
// in-process, Kafka fsync) against pay's paymentd, and waits until it is
// ready. Its CPU and RSS are the whole node's ("bridge").
func startShippedEnv(ctx context.Context, cfg Config, pay *env) (*env, error) {
	dir := filepath.Join(cfg.Dir, "shipped")
	n, err := startShipped(cfg.Bridge, dir, pay.payAddr, cfg.ProfileDir != "")
	if err != nil {
		return nil, err
	}
	if err := n.AwaitReady(ctx, 60*time.Second); err != nil {
		n.Kill()
		return nil, err
	}
	return &env{dir: dir, mqttURL: "tcp://" + n.MQTT, admin: n.Admin, bridge: n.Bridge, payAddr: pay.payAddr, hops: pay.hops}, nil
}
