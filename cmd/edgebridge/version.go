package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/edgebridge/edgebridge/bridge"
)

// Set at build time (make image): -ldflags "-X main.version=v1.2.3
// -X main.revision=<commit> -X main.buildTime=<RFC 3339>". Revision and
// build time otherwise come from the VCS stamp the go command records.
var (
	version   = "dev"
	revision  = ""
	buildTime = ""
)

// buildInfo is what this binary knows about its build.
func buildInfo() bridge.BuildInfo {
	bi := bridge.BuildInfo{Version: version, Revision: revision, Time: buildTime, GoVersion: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch {
			case s.Key == "vcs.revision" && bi.Revision == "":
				bi.Revision = s.Value
			case s.Key == "vcs.time" && bi.Time == "":
				bi.Time = s.Value
			case s.Key == "vcs.modified" && s.Value == "true" && revision == "":
				bi.Revision += "-dirty"
			}
		}
	}
	if bi.Revision == "" {
		bi.Revision = "unknown"
	}
	if bi.Time == "" {
		bi.Time = "unknown"
	}
	return bi
}

func printVersion() {
	bi := buildInfo()
	fmt.Printf("edgebridge %s\n  commit  %s\n  built   %s\n  go      %s\n", bi.Version, bi.Revision, bi.Time, bi.GoVersion)
}
