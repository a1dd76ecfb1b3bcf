package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/kit/devicesim"
)

const (
	rulesDir  = "../../deploy/prometheus"
	dashboard = "../../deploy/grafana/edgebridge-dashboard.json"
)

// promtool runs promtool (Debian's prometheus package, installed by the test command).
func promtool(t *testing.T, stdin io.Reader, args ...string) string {
	t.Helper()
	cmd := exec.Command("promtool", args...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestAlertRules: the shipped rules are valid and each alert fires on the
// series that should fire it and stays quiet otherwise (the rules' unit
// tests, run by promtool).
func TestAlertRules(t *testing.T) {
	promtool(t, nil, "check", "rules", filepath.Join(rulesDir, "edgebridge-rules.yml"))
	out := promtool(t, nil, "test", "rules", filepath.Join(rulesDir, "edgebridge-rules.test.yml"))
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %s", out)
	}
}

// TestDashboardQueriesOnRealPrometheus: a real Prometheus scrapes a running
// bridge (and loads the alert rules); every query of the Grafana dashboard
// returns data, and the bridge's /metrics pass promtool check metrics.
func TestDashboardQueriesOnRealPrometheus(t *testing.T) {
	s := newStack(t)
	ctx, cancel := context.WithCancel(withTimeout(t, 3*time.Minute))
	defer cancel()
	cfg := devicesim.Config{Broker: s.mqtt, Devices: 4, Requests: 1 << 20, Outstanding: 2, Duration: 2 * time.Minute, Rate: 40}
	done := runDevices(ctx, cfg)
	defer func() { cancel(); <-done }()

	resp, err := http.Get("http://" + s.bridge.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if out := promtool(t, strings.NewReader(string(metrics)), "check", "metrics"); strings.TrimSpace(out) != "" {
		t.Fatalf("promtool check metrics:\n%s", out)
	}

	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join(rulesDir, "edgebridge-rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
- job_name: edgebridge
  static_configs: [{targets: [%q]}]
`, rules, s.bridge.Admin)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	web := freeAddr(t)
	start(t, "prometheus", "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web, "--log.level=warn")
	api := "http://" + web + "/api/v1/"

	var rulesResp struct {
		Data struct {
			Groups []struct {
				Rules []struct{ Name string } `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	waitFor(t, time.Minute, "Prometheus to load the alert rules", func() bool {
		return getJSON(api+"rules", &rulesResp) == nil && len(rulesResp.Data.Groups) == 1 && len(rulesResp.Data.Groups[0].Rules) == 9
	})

	queries := dashboardQueries(t)
	if len(queries) < 20 {
		t.Fatalf("got %d dashboard queries, want the 24 of its panels", len(queries))
	}
	var empty []string
	waitFor(t, 90*time.Second, "every dashboard query to return data", func() bool {
		empty = empty[:0]
		for _, q := range queries {
			if !hasData(api, q) {
				empty = append(empty, q)
			}
		}
		return len(empty) == 0
	})
	if len(empty) > 0 {
		t.Fatalf("queries without data: %q", empty)
	}
}

// dashboardQueries returns every panel target's expression, with the
// dashboard's variables as Grafana would fill them for all bridges.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			q := strings.NewReplacer("$instance", ".*", "$__rate_interval", "30s").Replace(tg.Expr)
			out = append(out, q)
		}
	}
	return out
}

// hasData reports whether q returns at least one sample that is a number.
func hasData(api, q string) bool {
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if getJSON(api+"query?query="+url.QueryEscape(q), &r) != nil || r.Status != "success" {
		return false
	}
	for _, res := range r.Data.Result {
		if v, ok := res.Value[1].(string); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil && !math.IsNaN(f) {
				return true
			}
		}
	}
	return false
}

func getJSON(u string, v any) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
