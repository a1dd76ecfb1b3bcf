package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// `edgebridge config defaults` is a valid config equal to the defaults,
// names every setting, and leaves the derived ones as comments.
func TestDefaultsYAMLIsTheDefaults(t *testing.T) {
	out := DefaultsYAML()
	got, err := Parse(out)
	if err != nil {
		t.Fatalf("config defaults is not a valid config: %v\n%s", err, out)
	}
	if want := Default(); !reflect.DeepEqual(got, want) {
		t.Fatalf("config defaults parses to\n%+v\nwant the defaults\n%+v", got, want)
	}
	// With Dapr on, the derived backend.targets follows it: not pinned.
	dapr, err := Parse([]byte(strings.Replace(string(out), "  enabled: false\n  # socket_folder", "  enabled: true\n  # socket_folder", 1) +
		"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !dapr.Dapr.Enabled || len(dapr.Backend.Targets) != 0 {
		t.Errorf("config defaults with dapr.enabled: targets %v, want none (the default follows dapr.enabled)", dapr.Backend.Targets)
	}
	for key := range derived {
		leaf := key[strings.LastIndex(key, ".")+1:]
		if !strings.Contains(string(out), "# "+leaf+": (default: ") {
			t.Errorf("derived setting %s is not printed as a comment", key)
		}
	}
	for _, want := range []string{"  # broker URL, or \"embedded\". Default: embedded.\n  broker: embedded\n",
		"  session_timeout: 6s\n", "  window: 128\n", "  embedded_allow_insecure: false\n", "    jitter: 0.2\n", "  dlq_retention: 720h\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("config defaults lacks %q", want)
		}
	}
}

// docs/CONFIGURATION.md is DefaultsMarkdown (scripts/genconfig.sh).
func TestConfigurationDocCurrent(t *testing.T) {
	raw, err := os.ReadFile("../docs/CONFIGURATION.md")
	if err != nil || string(raw) != string(DefaultsMarkdown()) {
		t.Fatalf("docs/CONFIGURATION.md is stale (%v): run ./scripts/genconfig.sh and commit", err)
	}
}
