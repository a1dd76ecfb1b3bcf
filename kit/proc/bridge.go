package proc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/edgebridge/edgebridge/internal/await"
)

// BridgeConfig is the config file of a bridge under test or bench: the
// payment pipeline's topics, pointed at the brokers and backend given.
// The Extra fields are more YAML, indented as their section's keys (two
// spaces), or top-level for Top.
type BridgeConfig struct {
	MQTT      string   // broker URL
	ClientID  string   // the bridge's MQTT client id
	Subscribe string   // default: payment/request/+
	Kafka     []string // brokers
	DataDir   string   // kafka.data_dir: the bridge keeps files there with an external Kafka too
	Backend   string   // the one target; "": none (Dapr only)
	Admin     string   // admin.listen

	MQTTExtra, KafkaExtra, BackendExtra, AdminExtra, Top string
}

// YAML is the config file's text.
func (c BridgeConfig) YAML() string {
	subscribe := c.Subscribe
	if subscribe == "" {
		subscribe = "payment/request/+"
	}
	targets := ""
	if c.Backend != "" {
		targets = strconv.Quote(c.Backend)
	}
	brokers := make([]string, len(c.Kafka))
	for i, b := range c.Kafka {
		brokers[i] = strconv.Quote(b)
	}
	dataDir := ""
	if c.DataDir != "" {
		dataDir = "  data_dir: " + c.DataDir + "\n"
	}
	return fmt.Sprintf(`mqtt:
  broker: %s
  client_id: %s
  subscribe: [%q]
  reply_topic: "payment/response/{device_id}"
%skafka:
  brokers: [%s]
  topic: edgebridge.payment.requests
  dlq_topic: edgebridge.payment.dlq
  group_id: edgebridge
%s%sbackend:
  targets: [%s]
%sadmin:
  listen: %s
%s%s`, c.MQTT, c.ClientID, subscribe, c.MQTTExtra, strings.Join(brokers, ", "), dataDir, c.KafkaExtra,
		targets, c.BackendExtra, c.Admin, c.AdminExtra, c.Top)
}

// Write writes the config file to path.
func (c BridgeConfig) Write(path string) error { return os.WriteFile(path, []byte(c.YAML()), 0o644) }

// Bridge is `edgebridge run` as a child process, and its admin server.
type Bridge struct {
	*Process
	Admin string // admin server's address
}

// adminClient bounds every request to a bridge's admin server, so a
// stuck bridge fails the test or run instead of hanging it. It asks for
// no gzip: the bench reads /metrics every second, and compressing each
// answer (a new flate writer, ~1 MB) would charge the bridge's CPU and
// allocations 15 times what a Prometheus scrape every 15 s costs it.
var adminClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableCompression: true}}

// StartBridge runs `bin run -config configFile` with env added, and waits
// up to limit until its admin server at admin says it is ready. On error
// the process is killed.
func StartBridge(ctx context.Context, limit time.Duration, env []string, bin, configFile, admin string) (*Bridge, error) {
	p, err := Start(env, bin, "run", "-config", configFile)
	if err != nil {
		return nil, err
	}
	b := &Bridge{Process: p, Admin: admin}
	if err := b.AwaitReady(ctx, limit); err != nil {
		p.Kill()
		return nil, err
	}
	return b, nil
}

// AwaitReady waits up to limit until /readyz answers 200; it fails at
// once when the process exits.
func (b *Bridge) AwaitReady(ctx context.Context, limit time.Duration) error {
	err := await.Cond(ctx, limit, "edgebridge /readyz", func() error {
		if err := b.Exited(); err != nil {
			return await.Final(err)
		}
		code, body := b.Readyz()
		if code != http.StatusOK {
			return errors.New(strings.TrimSpace(body))
		}
		return nil
	})
	if err != nil && b.Exited() == nil {
		err = fmt.Errorf("%w\n--- %s output (tail) ---\n%s", err, b.Name, Tail(b.Output(), 3000))
	}
	return err
}

// Ready reports whether /readyz answers 200.
func (b *Bridge) Ready() bool {
	code, _ := b.Readyz()
	return code == http.StatusOK
}

// Readyz is /readyz's status code and body (0 and the error when
// unreachable).
func (b *Bridge) Readyz() (int, string) {
	body, code, err := b.get("/readyz")
	if err != nil {
		return 0, err.Error()
	}
	return code, body
}

// Metrics is the text of /metrics.
func (b *Bridge) Metrics() (string, error) {
	body, code, err := b.get("/metrics")
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("/metrics: %d", code)
	}
	return body, err
}

// Metric is the value of a series in /metrics; name carries its labels as
// the exposition writes them, e.g. x_total{event="a"}.
func (b *Bridge) Metric(name string) (float64, error) {
	text, err := b.Metrics()
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, errors.New("metric " + name + " not found")
}

func (b *Bridge) get(path string) (body string, code int, err error) {
	resp, err := adminClient.Get("http://" + b.Admin + path)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return string(raw), resp.StatusCode, err
}
