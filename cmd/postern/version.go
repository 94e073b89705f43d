package main

import (
	"cmp"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is set when packages are built:
//
//	go build -ldflags "-X main.version=1.2.0" ./cmd/postern
//
// A module download (go install …@v1.2.0) carries it in the build info.
var version string

// commit is set the same way (-X main.commit=…) where the build has no
// VCS information of its own.
var commit string

// versionString is "postern VERSION (COMMIT, GO VERSION)".
func versionString() string {
	v, rev, dirty := version, cmp.Or(commit, "unknown commit"), false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value[:min(12, len(s.Value))]
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if dirty {
		rev += "+changes"
	}
	return fmt.Sprintf("postern %s (%s, %s)", cmp.Or(strings.TrimPrefix(v, "v"), "devel"), rev, runtime.Version())
}

// shortVersion is the version number alone ("devel" for a build without
// one), for man page footers.
func shortVersion() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	return cmp.Or(strings.TrimPrefix(v, "v"), "devel")
}
