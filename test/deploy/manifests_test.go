package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	daprcomponents "github.com/dapr/dapr/pkg/apis/components/v1alpha1"
	daprsubscriptions "github.com/dapr/dapr/pkg/apis/subscriptions/v2alpha1"
	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/deploy/mosquitto"
)

// strict decodes Kubernetes and Dapr documents, refusing unknown and
// duplicate fields.
var strict = func() runtime.Decoder {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme,
		networkingv1.AddToScheme, daprcomponents.AddToScheme, daprsubscriptions.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// decodeAll splits raw into YAML documents and decodes each strictly,
// failing t for each that does not decode.
func decodeAll(t *testing.T, name string, raw []byte) []runtime.Object {
	t.Helper()
	objs, errs := decodeDocs(raw)
	for _, err := range errs {
		t.Errorf("%s: %v", name, err)
	}
	return objs
}

func decodeDocs(raw []byte) ([]runtime.Object, []error) {
	var objs []runtime.Object
	var errs []error
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, errs
		}
		if err != nil {
			return objs, append(errs, fmt.Errorf("document %d: %w", i, err))
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, _, err := strict.Decode(doc, nil, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", i, err))
			continue
		}
		objs = append(objs, obj)
	}
}

// TestStrictDecodeRefuses: a misspelt field, a duplicate field and an
// unknown kind are each an error, in Kubernetes and in Dapr documents.
func TestStrictDecodeRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"misspelt field":    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 1\n",
		"duplicate field":   "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  type: ClusterIP\n  type: LoadBalancer\n",
		"unknown kind":      "apiVersion: v1\nkind: Servise\nmetadata: {name: x}\n",
		"dapr field":        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: x}\nspec:\n  typ: pubsub.edgebridge\n  version: v1\n",
		"dapr subscription": "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: x}\nspec:\n  pubsubname: p\n  topic: t\n  route: /x\n",
	} {
		if _, errs := decodeDocs([]byte(doc)); len(errs) != 1 {
			t.Errorf("%s: got errors %v, want one", name, errs)
		}
	}
	if objs, errs := decodeDocs([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\n# only a comment\n")); len(errs) != 0 || len(objs) != 1 {
		t.Errorf("a valid document: %v %v", objs, errs)
	}
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(append(out, line...), '\n')
		}
	}
	return out
}

// kustomizeBuild renders the kustomization in dir.
func kustomizeBuild(t *testing.T, dir string) []byte {
	t.Helper()
	bin, err := exec.LookPath("kustomize")
	if err != nil {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		bin = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "kustomize")
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("kustomize is not installed (scripts/test.sh installs it: go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.1)")
		}
	}
	return []byte(run(t, dir, nil, bin, "build", "."))
}

// TestManifests: every file under deploy/ and components/ is a
// Kubernetes or Dapr document that decodes strictly, a kustomization that
// renders (and whose output decodes strictly and holds together), or an
// edgebridge config that passes validate.
func TestManifests(t *testing.T) {
	// The K3s configs name the node's address from the downward API.
	t.Setenv("NODE_IP", "192.0.2.1")
	var kustomizations []string
	for _, root := range []string{"deploy", "components"} {
		err := filepath.WalkDir(filepath.Join(repo, root), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
				return err
			}
			rel, _ := filepath.Rel(repo, path)
			if strings.HasPrefix(rel, "deploy/prometheus/") && d.Name() != "kustomization.yaml" {
				return nil // Prometheus rules: promtool checks them (test/integration TestAlertRules)
			}
			if d.Name() == "kustomization.yaml" {
				kustomizations = append(kustomizations, filepath.Dir(path))
				return nil
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			var head struct {
				Kind string `yaml:"kind"`
			}
			if err := yaml.Unmarshal(raw, &head); err != nil {
				t.Errorf("%s: %v", rel, err)
				return nil
			}
			if head.Kind == "" { // an edgebridge config: valid, and nothing exposed (no warning)
				if cfg, err := config.Parse(raw); err != nil {
					t.Errorf("%s: edgebridge validate: %v", rel, err)
				} else if w := cfg.Warnings(); len(w) > 0 {
					t.Errorf("%s: edgebridge validate warns: %q", rel, w)
				}
				return nil
			}
			decodeAll(t, rel, raw)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"deploy/grafana", "deploy/k3s/dapr", "deploy/k3s/site-mosquitto", "deploy/k3s/standalone", "deploy/prometheus"}
	var got []string
	for _, k := range kustomizations {
		rel, _ := filepath.Rel(repo, k)
		got = append(got, rel)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("kustomizations %v, want %v", got, want)
	}
	for _, dir := range kustomizations {
		rel, _ := filepath.Rel(repo, dir)
		t.Run(rel, func(t *testing.T) {
			objs := decodeAll(t, rel+" (rendered)", kustomizeBuild(t, dir))
			found := checkMonitoring(t, objs)
			if !strings.HasPrefix(rel, "deploy/k3s/") {
				return // a monitoring base: its ConfigMap only
			}
			if found != 2 {
				t.Errorf("got %d of the alert rules and dashboard ConfigMaps, want both", found)
			}
			checkRendered(t, objs)
			// The Dapr pod's sidecar needs ports of its own: no policy there.
			checkAround(t, objs, filepath.Base(dir) != "dapr")
		})
	}
}

// checkMonitoring checks the alert rules and dashboard ConfigMaps where
// they are rendered: labelled for the Prometheus and Grafana sidecars, with
// the files as shipped. It returns how many of the two it found.
func checkMonitoring(t *testing.T, objs []runtime.Object) (found int) {
	want := map[string]struct{ file, label string }{
		"edgebridge-alert-rules":       {"deploy/prometheus/edgebridge-rules.yml", "prometheus_rule"},
		"edgebridge-grafana-dashboard": {"deploy/grafana/edgebridge-dashboard.json", "grafana_dashboard"},
	}
	for _, o := range objs {
		cm, ok := o.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		w, ok := want[cm.Name]
		if !ok {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(repo, w.file))
		if err != nil {
			t.Fatal(err)
		}
		if cm.Labels[w.label] != "1" || cm.Data[filepath.Base(w.file)] != string(raw) {
			t.Errorf("ConfigMap %s: want label %s=1 and %s as shipped", cm.Name, w.label, w.file)
		}
		found++
	}
	return found
}

// checkRendered checks what one kustomization renders: every Deployment
// runs one replica with Recreate and a hardened pod; the bridge's config
// (its ConfigMap) passes validate, its grace period exceeds the drain
// timeout and its probes ask the admin port the config names; every
// ConfigMap, PVC and Secret a pod mounts is rendered or optional.
func checkRendered(t *testing.T, objs []runtime.Object) {
	configMaps := map[string]*corev1.ConfigMap{}
	claims := map[string]bool{}
	var deployments []*appsv1.Deployment
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			configMaps[o.Name] = o
		case *corev1.PersistentVolumeClaim:
			claims[o.Name] = true
		case *appsv1.Deployment:
			deployments = append(deployments, o)
		}
	}
	bridges := 0
	var bridgeCfg *config.Config
	type site struct {
		c          corev1.Container
		volumes    map[string]corev1.Volume
		containers []corev1.Container // of its pod
	}
	var mosquittos []site
	for _, d := range deployments {
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Errorf("deployment %s: want one replica with Recreate (singleton session and data)", d.Name)
		}
		pod := d.Spec.Template.Spec
		if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot ||
			pod.SecurityContext.SeccompProfile == nil || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("deployment %s: pod must run as non-root with the RuntimeDefault seccomp profile", d.Name)
		}
		volumes := map[string]corev1.Volume{}
		for _, v := range pod.Volumes {
			volumes[v.Name] = v
			switch {
			case v.ConfigMap != nil && configMaps[v.ConfigMap.Name] == nil:
				t.Errorf("deployment %s: volume %s: ConfigMap %s is not rendered", d.Name, v.Name, v.ConfigMap.Name)
			case v.PersistentVolumeClaim != nil && !claims[v.PersistentVolumeClaim.ClaimName]:
				t.Errorf("deployment %s: volume %s: PVC %s is not rendered", d.Name, v.Name, v.PersistentVolumeClaim.ClaimName)
			case v.Secret != nil && (v.Secret.Optional == nil || !*v.Secret.Optional):
				t.Errorf("deployment %s: volume %s: a Secret the user creates must be optional", d.Name, v.Name)
			}
		}
		for _, c := range pod.Containers {
			if d.Name == "payments" && c.Name == "payments" {
				continue // the user's Dapr app
			}
			sc := c.SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil ||
				*sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("deployment %s, container %s: want a read-only root, no privilege escalation, all capabilities dropped", d.Name, c.Name)
			}
			if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Memory().IsZero() {
				t.Errorf("deployment %s, container %s: no memory request or limit", d.Name, c.Name)
			}
			if len(c.Args) > 0 && c.Args[0] == "run" {
				bridges++
				bridgeCfg = checkBridge(t, d, c, volumes, configMaps)
			}
			if strings.Contains(c.Image, "eclipse-mosquitto") {
				mosquittos = append(mosquittos, site{c, volumes, pod.Containers})
			}
		}
	}
	if bridges != 1 {
		t.Errorf("%d edgebridge containers, want 1", bridges)
	}
	for _, m := range mosquittos {
		checkFirstStart(t, m.c, m.volumes, configMaps, bridgeCfg)
		checkSiteFiles(t, m.c, m.volumes, m.containers, bridgeCfg)
	}
}

// checkFirstStart: a site Mosquitto starts through first-start.sh, from its
// ConfigMap, with the bridge's client id and request filters, and keeps its
// persistence file where the script looks for it.
func checkFirstStart(t *testing.T, c corev1.Container, volumes map[string]corev1.Volume, configMaps map[string]*corev1.ConfigMap, bridge *config.Config) {
	if want := []string{"/bin/sh", "/mosquitto/config/first-start.sh"}; !reflect.DeepEqual(c.Command, want) {
		t.Errorf("mosquitto command %v, want %v", c.Command, want)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if bridge != nil && (env["EDGEBRIDGE_CLIENT_ID"] != bridge.MQTT.ClientID || env["EDGEBRIDGE_SUBSCRIBE"] != strings.Join(bridge.MQTT.Subscribe, " ")) {
		t.Errorf("mosquitto EDGEBRIDGE_CLIENT_ID %q, EDGEBRIDGE_SUBSCRIBE %q; the bridge's mqtt.client_id is %q, mqtt.subscribe %v",
			env["EDGEBRIDGE_CLIENT_ID"], env["EDGEBRIDGE_SUBSCRIBE"], bridge.MQTT.ClientID, bridge.MQTT.Subscribe)
	}
	script, data := false, false
	for _, m := range c.VolumeMounts {
		v := volumes[m.Name]
		if v.ConfigMap != nil && m.MountPath == "/mosquitto/config" && configMaps[v.ConfigMap.Name] != nil {
			_, script = configMaps[v.ConfigMap.Name].Data["first-start.sh"]
		}
		data = data || (v.PersistentVolumeClaim != nil && m.MountPath == "/mosquitto/data")
	}
	if !script || !data {
		t.Errorf("mosquitto: first-start.sh mounted from a ConfigMap at /mosquitto/config: %v; a persistent volume at /mosquitto/data: %v", script, data)
	}
}

// checkSiteFiles: a site Mosquitto reads the site directory from the
// volume where a sidecar in its pod keeps it (`edgebridge site mosquitto
// -data DIR -names ...`), and the bridge in that pod logs in on the
// loopback listener with the account the sidecar generates.
func checkSiteFiles(t *testing.T, c corev1.Container, volumes map[string]corev1.Volume, pod []corev1.Container, bridge *config.Config) {
	var siteVolume string
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/edgebridge" && m.ReadOnly {
			siteVolume = m.Name
		}
	}
	var keeper *corev1.Container
	for i, k := range pod {
		if len(k.Args) > 2 && k.Args[0] == "site" && k.Args[1] == "mosquitto" {
			keeper = &pod[i]
		}
	}
	if siteVolume == "" || keeper == nil {
		t.Fatalf("mosquitto: want the site directory's volume mounted read-only at /edgebridge (%q) and a site mosquitto sidecar in the pod (%v)", siteVolume, keeper != nil)
	}
	data := ""
	for i, a := range keeper.Args {
		if a == "-data" && i+1 < len(keeper.Args) {
			data = keeper.Args[i+1]
		}
	}
	mounted := false
	for _, m := range keeper.VolumeMounts {
		mounted = mounted || (m.Name == siteVolume && m.MountPath == data && !m.ReadOnly)
	}
	if !mounted || !slices.Contains(keeper.Args, "-names") {
		t.Errorf("site sidecar %v: want -data on the volume Mosquitto reads (%s), writable, and -names", keeper.Args, siteVolume)
	}
	if bridge == nil {
		return
	}
	if bridge.MQTT.Broker != "tcp://127.0.0.1:1883" || bridge.MQTT.Username != "edgebridge" || bridge.MQTT.PasswordFile != filepath.Join(data, "site", "bridge.password") {
		t.Errorf("bridge mqtt: broker %s, username %q, password_file %s; want Mosquitto's loopback listener tcp://127.0.0.1:1883 as edgebridge with %s/site/bridge.password",
			bridge.MQTT.Broker, bridge.MQTT.Username, bridge.MQTT.PasswordFile, data)
	}
	if bridge.Kafka.DataDir != data {
		t.Errorf("the bridge's kafka.data_dir %s is not the sidecar's -data %s", bridge.Kafka.DataDir, data)
	}
}

// checkAround: the bridge's pod has a PodDisruptionBudget, a Service on
// its admin port (metrics) and, with netpol, a NetworkPolicy — what README
// "Deploy" promises; a Service on its MQTT port routes to it while it is
// not ready.
func checkAround(t *testing.T, objs []runtime.Object, netpol bool) {
	var bridge *appsv1.Deployment
	for _, o := range objs {
		if d, ok := o.(*appsv1.Deployment); ok {
			for _, c := range d.Spec.Template.Spec.Containers {
				if len(c.Args) > 0 && c.Args[0] == "run" {
					bridge = d
				}
			}
		}
	}
	if bridge == nil {
		t.Fatal("no edgebridge deployment")
	}
	podLabels := labels.Set(bridge.Spec.Template.Labels)
	selects := func(sel map[string]string) bool {
		return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(podLabels)
	}
	var pdb, metrics, policy bool
	portOf := map[string]int32{} // the pod's container ports by name
	for _, c := range bridge.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			portOf[p.Name] = p.ContainerPort
		}
	}
	devicePorts := map[int32]bool{} // what Services route to devices
	admitted := map[int32]bool{}    // what a NetworkPolicy admits from anywhere
	for _, o := range objs {
		switch o := o.(type) {
		case *policyv1.PodDisruptionBudget:
			pdb = pdb || (o.Spec.Selector != nil && selects(o.Spec.Selector.MatchLabels))
		case *corev1.Service:
			for _, p := range o.Spec.Ports {
				metrics = metrics || (selects(o.Spec.Selector) && p.TargetPort.String() == "admin")
				// The bridge is not ready while no backend stream is up, and
				// devices must reach its MQTT broker all the same.
				if selects(o.Spec.Selector) && strings.HasPrefix(p.TargetPort.String(), "mqtt") {
					if !o.Spec.PublishNotReadyAddresses {
						t.Errorf("Service %s routes devices to the bridge only while it is ready (no backend: no intake); set publishNotReadyAddresses", o.Name)
					}
					if portOf[p.TargetPort.String()] == 0 {
						t.Errorf("Service %s targets port %s, which no container of the pod names", o.Name, p.TargetPort.String())
					}
					devicePorts[portOf[p.TargetPort.String()]] = true
				}
			}
		case *networkingv1.NetworkPolicy:
			if selects(o.Spec.PodSelector.MatchLabels) {
				policy = true
				for _, rule := range o.Spec.Ingress {
					for _, p := range rule.Ports {
						if len(rule.From) == 0 && p.Port != nil {
							admitted[p.Port.IntVal] = true
						}
					}
				}
			}
		}
	}
	if !pdb {
		t.Errorf("no PodDisruptionBudget selects the bridge's pod")
	}
	if !metrics {
		t.Errorf("no Service exposes the bridge's admin port (metrics)")
	}
	if netpol && !policy {
		t.Errorf("no NetworkPolicy selects the bridge's pod")
	}
	for port := range devicePorts {
		if policy && !admitted[port] {
			t.Errorf("the NetworkPolicy does not admit devices on port %d, where a Service routes them", port)
		}
	}
}

// checkBridge checks the edgebridge container c of d against its config.
func checkBridge(t *testing.T, d *appsv1.Deployment, c corev1.Container, volumes map[string]corev1.Volume, configMaps map[string]*corev1.ConfigMap) *config.Config {
	if len(c.Args) != 3 || c.Args[1] != "-config" {
		t.Fatalf("deployment %s: edgebridge args %v, want run -config FILE", d.Name, c.Args)
	}
	var cm *corev1.ConfigMap
	for _, m := range c.VolumeMounts {
		if v := volumes[m.Name]; v.ConfigMap != nil && filepath.Dir(c.Args[2]) == m.MountPath {
			cm = configMaps[v.ConfigMap.Name]
		}
	}
	if cm == nil {
		t.Fatalf("deployment %s: no ConfigMap mounted at %s", d.Name, filepath.Dir(c.Args[2]))
	}
	raw, ok := cm.Data[filepath.Base(c.Args[2])]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s", cm.Name, filepath.Base(c.Args[2]))
	}
	// The config reads the container's environment: literal values, and
	// the node's address from the downward API (a documentation address).
	const nodeIP = "192.0.2.1"
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP":
			t.Setenv(e.Name, nodeIP)
		case e.ValueFrom == nil:
			t.Setenv(e.Name, e.Value)
		}
	}
	cfg, err := config.Parse([]byte(raw))
	if err != nil {
		t.Fatalf("ConfigMap %s: edgebridge validate: %v", cm.Name, err)
	}
	if w := cfg.Warnings(); len(w) > 0 {
		t.Errorf("ConfigMap %s: validate warns: %q", cm.Name, w)
	}
	if cfg.EmbeddedMQTT() {
		// Secure by default: devices only over TLS, each with a login, on
		// ports the container declares, with the node's address in the
		// server certificate.
		e := cfg.MQTT.EmbeddedTLS
		if !cfg.MQTT.AuthEnabled() || e.Listen == "" || e.CertListen == "" || cfg.MQTT.EmbeddedAllowInsecure {
			t.Errorf("ConfigMap %s: devices must log in over TLS (embedded_auth, embedded_tls.listen and cert_listen, not embedded_allow_insecure)", cm.Name)
		}
		if cfg.MQTT.EmbeddedAuth.PasswordFile != filepath.Join(cfg.Kafka.DataDir, "site/passwd") {
			t.Errorf("ConfigMap %s: embedded_auth.password_file %s, want kafka.data_dir/site/passwd (where edgebridge device add writes)", cm.Name, cfg.MQTT.EmbeddedAuth.PasswordFile)
		}
		if !slices.Contains(e.Names, nodeIP) {
			t.Errorf("ConfigMap %s: embedded_tls.names %q lack the node's address (downward API status.hostIP)", cm.Name, e.Names)
		}
		for _, l := range []string{e.Listen, e.CertListen} {
			_, port, _ := net.SplitHostPort(l)
			if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return strconv.Itoa(int(p.ContainerPort)) == port }) {
				t.Errorf("deployment %s: the container does not declare port %s (%s)", d.Name, port, l)
			}
		}
	}
	grace := time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	if grace < cfg.Shutdown.DrainTimeout+10*time.Second {
		t.Errorf("deployment %s: terminationGracePeriodSeconds %s, want at least shutdown.drain_timeout (%s) + 10s", d.Name, grace, cfg.Shutdown.DrainTimeout)
	}
	_, adminPort, err := net.SplitHostPort(cfg.Admin.Listen)
	if err != nil {
		t.Fatal(err)
	}
	probes := map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe}
	wantPath := map[string]string{"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"}
	for kind, p := range probes {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("deployment %s: no %s probe over HTTP", d.Name, kind)
			continue
		}
		if p.HTTPGet.Path != wantPath[kind] {
			t.Errorf("deployment %s: %s probe asks %s, want %s", d.Name, kind, p.HTTPGet.Path, wantPath[kind])
		}
		port := p.HTTPGet.Port.String()
		for _, cp := range c.Ports {
			if cp.Name == port {
				port = strconv.Itoa(int(cp.ContainerPort))
			}
		}
		if port != adminPort {
			t.Errorf("deployment %s: %s probe on port %s, but admin.listen is %s", d.Name, kind, port, cfg.Admin.Listen)
		}
	}
	if cfg.EmbeddedKafka() || cfg.EmbeddedMQTT() {
		mounted := false
		for _, m := range c.VolumeMounts {
			if v := volumes[m.Name]; v.PersistentVolumeClaim != nil && (m.MountPath == cfg.Kafka.DataDir || m.MountPath+"/" == cfg.Kafka.DataDir) {
				mounted = true
			}
		}
		if !mounted {
			t.Errorf("deployment %s: kafka.data_dir %s (embedded brokers) is not a persistent volume", d.Name, cfg.Kafka.DataDir)
		}
	}
	return &cfg
}

// TestSiteMosquittoConf: the site broker's mosquitto.conf (K3s and
// docker-compose.upstream.yml) is the shipped production one with the
// files of the site directory (mounted at /edgebridge/site) and a loopback
// listener for the bridge, and its ACL is the shipped one.
func TestSiteMosquittoConf(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repo, "deploy/k3s/site-mosquitto/mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	want := strings.NewReplacer(
		"allow_anonymous false\n", "allow_anonymous false\nlistener 1883 127.0.0.1\n",
		"/mosquitto/certs/device-ca.pem\n", "/edgebridge/site/ca.pem\n",
		"/mosquitto/certs/", "/edgebridge/site/",
		"password_file /mosquitto/config/passwd\n", "password_file /edgebridge/site/passwd\n",
	).Replace(mosquitto.ShippedProduction)
	if got, want := settings(string(raw)), settings(want); !reflect.DeepEqual(got, want) {
		t.Errorf("site mosquitto.conf settings:\n%s\nwant (production, with the site directory's files and a loopback listener):\n%s",
			strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	acl, err := os.ReadFile(filepath.Join(repo, "deploy/k3s/site-mosquitto/acl"))
	if err != nil || string(acl) != mosquitto.ShippedACL {
		t.Errorf("deploy/k3s/site-mosquitto/acl differs from deploy/mosquitto/acl (%v)", err)
	}
}

// settings are the lines of a mosquitto.conf that are not comments.
func settings(conf string) []string {
	var out []string
	for _, line := range strings.Split(conf, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out
}
