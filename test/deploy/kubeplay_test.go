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
// image under test) with podman kube play: 100 device requests from the
// host get their replies, and 100 more after the pod is replaced, with
// nothing delivered twice and the data kept.
func TestKubePlay(t *testing.T) {
	needContainers(t, "mosquitto_pub", "mosquitto_sub")
	image(t)
	mqttPort, adminPort := freePort(t), freePort(t)
	rendered := strings.NewReplacer(
		"hostPort: 41883", fmt.Sprintf("hostPort: %d", mqttPort),
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

	start := time.Now()
	run(t, dir, containerEnv(), "podman", "kube", "play", manifest)
	waitReady(t, adminPort, 2*time.Minute)
	t.Logf("kube play to bridge ready: %s", time.Since(start).Round(time.Millisecond))
	payFromHost(t, mqttPort, 100, "play")
	t.Logf("bridge RSS in its container after 100 requests: %s", containerRSS(t, "ebkp-edgebridge-pod-0-edgebridge"))

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
	payFromHost(t, mqttPort, 100, "replaced")
	if got := metric(t, adminPort, "edgebridge_grpc_stream_deliveries_total"); got != 100 {
		t.Errorf("deliveries by the new pod: %v, want 100 (requests of the old pod delivered again?)", got)
	}
	ids := ledger(t, "ebkp-paymentd-data")
	if len(ids) != 200 {
		t.Errorf("ledger holds %d message ids, want 200", len(ids))
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
