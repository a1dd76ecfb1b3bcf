package deploy

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// composeProject runs podman-compose on the repo's compose files as
// project name, with the host ports the test picked.
type composeProject struct {
	name                         string
	tlsPort, certPort, adminPort int
	files                        []string
	dir                          string
}

func (p composeProject) run(t *testing.T, args ...string) string {
	t.Helper()
	var full []string
	for _, f := range p.files {
		full = append(full, "-f", f)
	}
	full = append(append(full, "-p", p.name), args...)
	return run(t, p.dir, containerEnv(
		"EDGEBRIDGE_IMAGE="+testImage,
		"EDGEBRIDGE_MQTT_TLS_PORT=127.0.0.1:"+strconv.Itoa(p.tlsPort),
		"EDGEBRIDGE_MQTT_CERT_PORT=127.0.0.1:"+strconv.Itoa(p.certPort),
		"EDGEBRIDGE_ADMIN_PORT=127.0.0.1:"+strconv.Itoa(p.adminPort),
	), "podman-compose", full...)
}

// remove deletes the project's containers, volumes and network, whatever
// podman-compose left (1.0.3 never removes the network).
func (p composeProject) remove() {
	env := containerEnv()
	label := "label=io.podman.compose.project=" + p.name
	if ids, _, _ := tryRun("", env, "podman", "ps", "-aq", "--filter", label); strings.TrimSpace(ids) != "" {
		tryRun("", env, "podman", append([]string{"rm", "-f", "-t", "5"}, strings.Fields(ids)...)...)
	}
	if vols, _, _ := tryRun("", env, "podman", "volume", "ls", "-q", "--filter", label); strings.TrimSpace(vols) != "" {
		tryRun("", env, "podman", append([]string{"volume", "rm", "-f"}, strings.Fields(vols)...)...)
	}
	tryRun("", env, "podman", "network", "rm", "-f", p.name+"_default")
}

// TestCompose: docker-compose.yml comes up under podman-compose from the
// image alone, secure from its first start (checkSiteSecurity: strangers
// refused, devices provisioned, removed and given certificates through
// podman exec); 100 requests from devices added with `device add` get
// their replies over TLS; down and up again, in any start order, keeps
// the site CA, Kafka's data and the consumer's offsets (nothing is
// delivered twice) and the ledger; down -v removes the volumes.
func TestCompose(t *testing.T) {
	needContainers(t, "podman-compose")
	image(t)
	p := composeProject{
		name:      fmt.Sprintf("ebtest%d", os.Getpid()),
		tlsPort:   freePort(t),
		certPort:  freePort(t),
		adminPort: freePort(t),
		files:     []string{repo + "/docker-compose.yml"},
		dir:       t.TempDir(), // podman-compose reads .env from here: none
	}
	t.Cleanup(func() { p.remove() })
	site := siteUnderTest{container: p.name + "_edgebridge_1", volume: p.name + "_edgebridge-data", tlsPort: p.tlsPort, certPort: p.certPort}

	up := time.Now()
	p.run(t, "up", "-d")
	waitReady(t, p.adminPort, 2*time.Minute)
	t.Logf("compose up -d to bridge ready: %s", time.Since(up).Round(time.Millisecond))
	checkSiteSecurity(t, site)
	site.pay(t, "first", 10, 10)
	t.Logf("bridge RSS in its container after 110 requests: %s", containerRSS(t, site.container))
	ca, _ := site.ca(t)
	base := metric(t, p.adminPort, "edgebridge_grpc_stream_deliveries_total")

	// Up again in the worst order: the bridge first, alone, then the
	// backend and the Kafka broker it needs (the bridge hosts MQTT).
	p.run(t, "down")
	p.run(t, "up", "--no-start") // (1.0.3 passes -d on to podman create, which refuses it)
	podman(t, "start", site.container)
	waitAnswer(t, p.adminPort, http.StatusServiceUnavailable, time.Minute)
	for _, svc := range []string{"paymentd", "kafka"} {
		podman(t, "start", p.name+"_"+svc+"_1")
	}
	waitReady(t, p.adminPort, 2*time.Minute)
	if again, _ := site.ca(t); again != ca {
		t.Errorf("the site CA changed across down and up:\n%s\nthen\n%s", ca, again)
	}
	site.pay(t, "second", 10, 10)
	// Records are consumed in order per partition: had the restart lost
	// the committed offsets, the first requests would have been delivered
	// again before the second.
	if got := metric(t, p.adminPort, "edgebridge_grpc_stream_deliveries_total"); got != 100 {
		t.Errorf("deliveries after the restart: %v, want 100 (before it: %v; the first requests were delivered again?)", got, base)
	}
	ids := ledger(t, p.name+"_paymentd-data")
	if len(ids) != 210 {
		t.Errorf("ledger holds %d message ids, want 210", len(ids))
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("message %s processed %d times", id, n)
		}
	}

	p.run(t, "down", "-v")
	if vols := strings.TrimSpace(podman(t, "volume", "ls", "-q", "--filter", "label=io.podman.compose.project="+p.name)); vols != "" {
		t.Errorf("down -v left volumes: %s", vols)
	}
}

// TestComposeUpstream: docker-compose.upstream.yml, laid over the default
// file, swaps in the official Apache Kafka (KRaft) image and adds the
// official Mosquitto (with the site settings) in the bridge's network
// namespace, so devices reach it on the ports the bridge publishes and the
// bridge on 127.0.0.1 with the config of the site-mosquitto base, and the
// site service that keeps Mosquitto's files in the bridge's volume;
// paymentd stays as it was. (TestMosquittoSite runs the same Mosquitto
// setup with the host's Mosquitto.) Parsed and rendered by
// podman-compose (--dry-run), not run: those images cannot be pulled here
// (and podman-compose 1.0.3 renders network_mode service: as podman does
// not take it; Docker Compose does).
func TestComposeUpstream(t *testing.T) {
	needContainers(t, "podman-compose")
	var base, upstream struct {
		Services map[string]map[string]any `yaml:"services"`
	}
	for file, into := range map[string]any{"docker-compose.yml": &base, "docker-compose.upstream.yml": &upstream} {
		raw, err := os.ReadFile(filepath.Join(repo, file))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, into); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	for name := range upstream.Services {
		if base.Services[name] == nil && name != "mqtt" && name != "site" {
			t.Errorf("docker-compose.upstream.yml: service %s is not in docker-compose.yml (it would add one, not swap one)", name)
		}
	}
	if base.Services["mqtt"] != nil || base.Services["site"] != nil {
		t.Error("docker-compose.yml has an mqtt or site service: the bridge hosts the MQTT broker")
	}
	if nm := upstream.Services["mqtt"]["network_mode"]; nm != "service:edgebridge" {
		t.Errorf("upstream mqtt network_mode = %v, want service:edgebridge (devices use the bridge's published port)", nm)
	}

	p := composeProject{name: fmt.Sprintf("ebdry%d", os.Getpid()), tlsPort: 1, certPort: 3, adminPort: 2, dir: t.TempDir(),
		files: []string{repo + "/docker-compose.yml", repo + "/docker-compose.upstream.yml"}}
	t.Cleanup(func() { p.remove() }) // podman-compose 1.0.3 creates volumes even with --dry-run
	runs := map[string]string{}
	for _, line := range strings.Split(p.run(t, "--dry-run", "up", "-d"), "\n") {
		if rest, ok := strings.CutPrefix(line, "podman run --name="+p.name+"_"); ok {
			runs[rest[:strings.Index(rest, "_")]] = line
		}
	}
	site := repo + "/deploy/k3s/site-mosquitto/"
	want := map[string][]string{
		"mqtt": {" docker.io/library/eclipse-mosquitto:2", " -v " + site + "mosquitto.conf:/mosquitto/config/mosquitto.conf:ro ", p.name + "_mqtt-data:/mosquitto/data",
			" -v " + site + "first-start.sh:/mosquitto/config/first-start.sh:ro ", " -v " + site + "acl:/mosquitto/config/acl:ro ",
			p.name + "_edgebridge-data:/edgebridge:ro", "EDGEBRIDGE_CLIENT_ID=edgebridge-1", "/bin/sh /mosquitto/config/first-start.sh", "-u 1883:65532"},
		"site":     {" " + testImage + " ", p.name + "_edgebridge-data:/data", "site mosquitto -data /data -names localhost,127.0.0.1"},
		"kafka":    {" docker.io/apache/kafka:3", "KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://kafka:9092", "KAFKA_PROCESS_ROLES=broker,controller", "KAFKA_LOG_RETENTION_MS=-1", p.name + "_kafka-data:/var/lib/kafka/data"},
		"paymentd": {" " + testImage + " ", `--entrypoint ["paymentd"]`},
		"edgebridge": {" " + testImage, "EDGEBRIDGE_KAFKA=kafka:9092", "EDGEBRIDGE_BACKEND=paymentd:7070", "EDGEBRIDGE_CONFIG=/etc/edgebridge/site-mosquitto.yaml",
			" -v " + site + "config/edgebridge.yaml:/etc/edgebridge/site-mosquitto.yaml:ro ", "127.0.0.1:1:8883", "127.0.0.1:3:8884",
			"run -config /etc/edgebridge/site-mosquitto.yaml"},
	}
	for svc, parts := range want {
		line, ok := runs[svc]
		if !ok {
			t.Errorf("no container for service %s in:\n%v", svc, runs)
			continue
		}
		for _, part := range parts {
			if !strings.Contains(line, part) {
				t.Errorf("service %s: %q missing from\n%s", svc, part, line)
			}
		}
	}
}
