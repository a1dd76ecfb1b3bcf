// Package deploy tests what ships: the image (built with make image's
// script, run under podman), docker-compose.yml under podman-compose, and
// the manifests under deploy/ and components/ (decoded strictly against the
// Kubernetes and Dapr API types, rendered with kustomize, and the
// standalone base run with podman kube play).
//
// The tests need podman, podman-compose, runc, mosquitto-clients and
// kustomize (scripts/test.sh installs them). EDGEBRIDGE_SKIP_CONTAINERS=1
// skips the tests that run containers; CI never sets it.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/kit/proc"
)

// repo is the repository root.
var repo = func() string {
	abs, err := filepath.Abs("../..")
	if err != nil {
		panic(err)
	}
	return abs
}()

// testImage is the tag the tests build; make image builds
// localhost/edgebridge:dev from the same script.
const testImage = "localhost/edgebridge:ci"

// needContainers skips t when EDGEBRIDGE_SKIP_CONTAINERS=1 and fails it
// when a tool is missing.
func needContainers(t *testing.T, tools ...string) {
	t.Helper()
	if os.Getenv("EDGEBRIDGE_SKIP_CONTAINERS") == "1" {
		t.Skip("EDGEBRIDGE_SKIP_CONTAINERS=1")
	}
	for _, tool := range append([]string{"podman"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (scripts/test.sh installs it): %v", tool, err)
		}
	}
}

// containerEnv is the environment of podman and podman-compose: the
// project's containers.conf unless the caller set CONTAINERS_CONF.
func containerEnv(extra ...string) []string {
	env := os.Environ()
	if os.Getenv("CONTAINERS_CONF") == "" {
		env = append(env, "CONTAINERS_CONF="+filepath.Join(repo, "deploy/podman/containers.conf"))
	}
	return append(env, extra...)
}

// run runs name with args in dir and returns its stdout; it fails t with
// the output when the command fails.
func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, errOut, err := tryRun(dir, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// tryRun runs name with args in dir, with a timeout, and returns its
// stdout and stderr.
func tryRun(dir string, env []string, name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

func podman(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, repo, containerEnv(), "podman", args...)
}

var (
	buildOnce sync.Once
	buildErr  error
	buildOut  string // stderr of a failed build
)

// image builds testImage once per test binary with scripts/image.sh, the
// script behind make image.
func image(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		_, buildOut, buildErr = tryRun(repo, containerEnv("IMAGE="+testImage, "ENGINE=podman"), "./scripts/image.sh")
	})
	if buildErr != nil {
		t.Fatalf("scripts/image.sh: %v\n%s", buildErr, buildOut)
	}
	return testImage
}

// freePort returns a port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	port, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// waitReady polls the bridge's /readyz until it answers 200 and returns
// how long that took.
func waitReady(t *testing.T, adminPort int, within time.Duration) time.Duration {
	t.Helper()
	return waitAnswer(t, adminPort, http.StatusOK, within)
}

// waitAnswer polls the bridge's /readyz until it answers with status.
func waitAnswer(t *testing.T, adminPort, status int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	b := proc.Bridge{Admin: fmt.Sprintf("127.0.0.1:%d", adminPort)}
	err := await.Cond(context.Background(), within, fmt.Sprintf("/readyz answering %d", status), func() error {
		if code, body := b.Readyz(); code != status {
			return fmt.Errorf("%d: %s", code, strings.TrimSpace(body))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// metric sums the samples of a counter or gauge on the bridge's /metrics.
func metric(t *testing.T, adminPort int, name string) float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// ledger reads paymentd's ledger from the named volume and returns how
// many entries each message id has.
func ledger(t *testing.T, volume string) map[string]int {
	t.Helper()
	dir := strings.TrimSpace(podman(t, "volume", "inspect", "--format", "{{.Mountpoint}}", volume))
	raw, err := os.ReadFile(filepath.Join(dir, "ledger.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var e struct {
			MessageID string `json:"message_id"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("ledger line %q: %v", line, err)
		}
		ids[e.MessageID]++
	}
	return ids
}

// containerRSS is the resident memory of a running container's main
// process, from /proc.
func containerRSS(t *testing.T, name string) string {
	t.Helper()
	pid := strings.TrimSpace(podman(t, "inspect", "--format", "{{.State.Pid}}", name))
	raw, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			return strings.Join(strings.Fields(line)[1:], " ")
		}
	}
	return "unknown"
}
