package deploy

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestImage: make image's script builds the image from this checkout; it
// runs edgebridge and paymentd, holds no shell, runs as 65532 with a /data
// volume and carries the OCI labels.
func TestImage(t *testing.T) {
	needContainers(t)
	img := image(t)

	out := podman(t, "run", "--rm", img, "version")
	if !strings.HasPrefix(out, "edgebridge ") || !strings.Contains(out, "commit  ") || strings.Contains(out, "commit  unknown") {
		t.Errorf("edgebridge version in the image:\n%s", out)
	}
	_, help, err := tryRun(repo, containerEnv(), "podman", "run", "--rm", "--entrypoint", "paymentd", img, "-h")
	if err != nil || !strings.Contains(help, "-ledger") {
		t.Errorf("paymentd -h in the image: %v\n%s", err, help)
	}
	for _, sh := range []string{"/bin/sh", "/bin/bash", "/bin/busybox"} {
		if _, _, err := tryRun(repo, containerEnv(), "podman", "run", "--rm", "--entrypoint", sh, img, "-c", "true"); err == nil {
			t.Errorf("%s ran in the image", sh)
		}
	}

	var inspect []struct {
		Size   int64
		Config struct {
			User    string
			Volumes map[string]struct{}
			Labels  map[string]string
		}
	}
	if err := json.Unmarshal([]byte(podman(t, "image", "inspect", img)), &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("podman image inspect: %v", err)
	}
	c := inspect[0].Config
	if c.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532", c.User)
	}
	if _, ok := c.Volumes["/data"]; !ok {
		t.Errorf("volumes %v, want /data", c.Volumes)
	}
	for _, l := range []string{"org.opencontainers.image.version", "org.opencontainers.image.revision", "org.opencontainers.image.created", "org.opencontainers.image.source"} {
		if c.Labels[l] == "" || c.Labels[l] == "unknown" {
			t.Errorf("label %s = %q", l, c.Labels[l])
		}
	}
	t.Logf("image %s: %.1f MB", img, float64(inspect[0].Size)/1e6)
}
