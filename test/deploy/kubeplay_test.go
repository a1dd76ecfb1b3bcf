package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestKubePlay runs the rendered standalone base (through the test overlay
// in testdata/kubeplay: paymentd in the bridge's pod, host ports, the
// image under test) with podman kube play: secure from its first start
// (checkSiteSecurity, provisioning through podman exec as through kubectl
// exec), 100 requests from devices added with `device add` get their
// replies over TLS, and 100 more after the pod is replaced, with nothing
// delivered twice and the data and the site CA kept.
func TestKubePlay(t *testing.T) {
	needContainers(t)
	image(t)
	tlsPort, certPort, adminPort := freePort(t), freePort(t), freePort(t)
	rendered := strings.NewReplacer(
		"hostPort: 48883", fmt.Sprintf("hostPort: %d", tlsPort),
		"hostPort: 48884", fmt.Sprintf("hostPort: %d", certPort),
		"hostPort: 49464", fmt.Sprintf("hostPort: %d", adminPort),
		"localhost/edgebridge:ci", testImage,
	).Replace(string(kustomizeBuild(t, filepath.Join(repo, "test/deploy/testdata/kubeplay"))))
	objs, errs := decodeDocs([]byte(rendered))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	dir := t.TempDir() // no file in it is named like the image
	manifest := filepath.Join(dir, "standalone.yaml")
	if err := os.WriteFile(manifest, []byte(rendered), 0o644); err != nil {
		t.Fatal(err)
	}
	cleanup := func() { removePlayed(dir, manifest, objs) }
	cleanup() // what an interrupted run left
	t.Cleanup(cleanup)
	site := siteUnderTest{container: "ebkp-edgebridge-pod-0-edgebridge", volume: "ebkp-edgebridge-data", tlsPort: tlsPort, certPort: certPort}

	start := time.Now()
	run(t, dir, containerEnv(), "podman", "kube", "play", manifest)
	waitReady(t, adminPort, 2*time.Minute)
	t.Logf("kube play to bridge ready: %s", time.Since(start).Round(time.Millisecond))
	checkSiteSecurity(t, site)
	site.pay(t, "play", 10, 10)
	t.Logf("bridge RSS in its container after 110 requests: %s", containerRSS(t, site.container))
	ca, _ := site.ca(t)

	// Replace the pod as a rollout does. podman 4.3 refuses to play a
	// PersistentVolumeClaim whose volume exists, so the second play leaves
	// them out: the pod mounts the volumes the first one created, as a
	// new pod mounts the bound claims on K3s.
	var kept []string
	for _, doc := range strings.Split(rendered, "\n---\n") {
		if !strings.Contains(doc, "\nkind: PersistentVolumeClaim\n") && !strings.HasPrefix(doc, "kind: PersistentVolumeClaim\n") {
			kept = append(kept, doc)
		}
	}
	if len(kept) == len(strings.Split(rendered, "\n---\n")) {
		t.Fatal("no PersistentVolumeClaim in the rendered manifests")
	}
	replacement := filepath.Join(dir, "replacement.yaml")
	if err := os.WriteFile(replacement, []byte(strings.Join(kept, "\n---\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	run(t, dir, containerEnv(), "podman", "kube", "play", "--replace", replacement)
	waitReady(t, adminPort, 2*time.Minute)
	t.Logf("pod replaced and ready in %s", time.Since(start).Round(time.Millisecond))
	if again, _ := site.ca(t); again != ca {
		t.Errorf("the site CA changed when the pod was replaced:\n%s\nthen\n%s", ca, again)
	}
	site.pay(t, "replaced", 10, 10)
	if got := metric(t, adminPort, "edgebridge_grpc_stream_deliveries_total"); got != 100 {
		t.Errorf("deliveries by the new pod: %v, want 100 (requests of the old pod delivered again?)", got)
	}
	ids := ledger(t, "ebkp-paymentd-data")
	if len(ids) != 210 {
		t.Errorf("ledger holds %d message ids, want 210", len(ids))
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("message %s processed %d times", id, n)
		}
	}
}

// removePlayed removes the pods kube play made from manifest and the
// volumes and secrets it made for its ConfigMaps, claims and Secrets.
func removePlayed(dir, manifest string, objs []runtime.Object) {
	env := containerEnv()
	tryRun(dir, env, "podman", "kube", "down", manifest)
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			tryRun(dir, env, "podman", "volume", "rm", "-f", o.Name)
		case *corev1.PersistentVolumeClaim:
			tryRun(dir, env, "podman", "volume", "rm", "-f", o.Name)
		case *corev1.Secret:
			tryRun(dir, env, "podman", "secret", "rm", o.Name)
		}
	}
}
