package shim

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Version is Keel's version; a release build may set it with -ldflags -X.
var Version = "0.1.0-dev"

// Build says which build this is: the version, and what the Go toolchain
// recorded of the source (the git commit, and whether the tree had
// uncommitted changes) and of itself. A build from a checkout needs no
// flags for that; one from a module cache has the module's version instead.
type Build struct {
	Version, Revision, GoVersion string
}

// ThisBuild reads the build information of the running binary.
func ThisBuild() Build {
	b := Build{Version: Version, Revision: "unknown", GoVersion: "unknown"}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.GoVersion = info.GoVersion
	if v := info.Main.Version; v != "" && v != "(devel)" {
		b.Version = strings.TrimPrefix(v, "v")
	}
	var dirty bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && b.Revision != "unknown" {
		b.Revision += ".m" // as containerd marks a modified tree
	}
	return b
}

// String is what `-v` prints, in the layout containerd's shims use.
func (b Build) String() string {
	return fmt.Sprintf("containerd-shim-keel-v2:\n  Version:  %s\n  Revision: %s\n  Go version: %s\n", b.Version, b.Revision, b.GoVersion)
}
