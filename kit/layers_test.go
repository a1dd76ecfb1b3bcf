package kit

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/edgebridge/edgebridge/"

// layers are the project's folders, bottom up (docs/ARCHITECTURE.md).
var layers = [][]string{
	{"api", "internal", "deploy/mosquitto", "config/gendoc"},                                                             // contract, leaf helpers
	{"mqttin", "transcoder", "kafkapipe", "ackwindow", "embedded", "backend", "tracing", "payment", "siteca", "devices"}, // the stages
	{"settle", "grpcout", "grpcmetrics", "config", "daprcomp", "bridge", "conformance"},                                  // assembly
	{"node"},                    // the composition root
	{"kit"},                     // what drives the product
	{"cmd", "test", "examples"}, // binaries and the tests of the whole
}

// layer is the index in layers of a package path inside the module.
func layer(t *testing.T, pkg string) int {
	rel := strings.TrimPrefix(pkg, module)
	for i, folders := range layers {
		for _, f := range folders {
			if rel == f || strings.HasPrefix(rel, f+"/") {
				return i
			}
		}
	}
	t.Fatalf("package %s is in no layer: add its folder to layers", pkg)
	return 0
}

type pkgImports struct {
	path          string
	code, testing []string // the module's packages imported by its code and by its in-package tests
}

func listPackages(t *testing.T) []pkgImports {
	t.Helper()
	out, err := exec.Command("go", "list", "-f",
		"{{.ImportPath}}|{{join .Imports \" \"}}|{{join .TestImports \" \"}}", module+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	own := func(list string) (pkgs []string) {
		for p := range strings.FieldsSeq(list) {
			if strings.HasPrefix(p, module) {
				pkgs = append(pkgs, p)
			}
		}
		return pkgs
	}
	var all []pkgImports
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "|")
		if strings.HasPrefix(f[0], module+"third_party/") {
			continue // patched copies of other modules
		}
		all = append(all, pkgImports{path: f[0], code: own(f[1]), testing: own(f[2])})
	}
	return all
}

// No package's code imports from a layer above its own, nor do its tests
// inside the package, except packages whose code imports nothing above the
// leaf helpers (testpki, disktest). External test packages (package x_test)
// test the product from outside, like test/, and may use the kit.
func TestNoImportFromALayerAbove(t *testing.T) {
	pkgs := listPackages(t)
	leafOnly := map[string]bool{}
	for _, p := range pkgs {
		leafOnly[p.path] = true
		for _, imp := range p.code {
			if layer(t, imp) > 0 {
				leafOnly[p.path] = false
			}
		}
	}
	for _, p := range pkgs {
		own := layer(t, p.path)
		for _, imp := range p.code {
			if layer(t, imp) > own {
				t.Errorf("%s (layer %d) imports %s (layer %d)", p.path, own, imp, layer(t, imp))
			}
		}
		for _, imp := range p.testing {
			if imp != p.path && layer(t, imp) > own && !leafOnly[imp] {
				t.Errorf("%s's tests (layer %d) import %s (layer %d)", p.path, own, imp, layer(t, imp))
			}
		}
	}
}
