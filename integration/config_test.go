//go:build linux

package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/keel-shim/keel/integration/imagebuild"
	"github.com/pelletier/go-toml/v2"
)

// criHandler is the RuntimeClass handler the CRI tests run pods with. Its
// runtime entry is a copy of the stock "runc" entry with runtime_type set to
// the runtime under test (Keel, or io.containerd.runc.v2 to check the tests).
const criHandler = "keel"

// criNamespace is the containerd namespace the CRI keeps pods in.
const criNamespace = "k8s.io"

// tomlTable is a TOML table as go-toml decodes it.
type tomlTable = map[string]any

// buildConfig returns containerd's configuration for d as a node runs it:
// what this version's own `containerd config default` prints, with only
// what a private instance next to others must change, the CRI's sandbox
// image, and a runtime for the handler criHandler. Every key it changes
// must already be in the default: a key that moved in a new containerd
// fails here instead of being silently ignored.
func (d *Daemon) buildConfig() ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(d.binDir, "containerd"), "config", "default")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s config default: %v: %s", cmd.Path, err, stderr.String())
	}
	cfg := tomlTable{}
	if err := toml.Unmarshal(out, &cfg); err != nil {
		return nil, fmt.Errorf("parse `containerd %s config default`: %v", d.Version, err)
	}
	e := &configEditor{cfg: cfg}
	e.set("root", filepath.Join(d.Dir, "root"))
	e.set("state", filepath.Join(d.Dir, "state"))
	// Config version 4 (2.4) moved the servers' addresses into plugins.
	e.setFirst(d.Address, "grpc.address", `plugins."io.containerd.server.v1.grpc".address`)
	e.setFirst(d.Address+".ttrpc", "ttrpc.address", `plugins."io.containerd.server.v1.ttrpc".address`)
	e.set("debug.level", "debug")
	// 2.x imports the host's drop-ins (/etc/containerd/conf.d/*.toml), which
	// configure the machine's own containerd, not these.
	if e.has("imports") {
		e.set("imports", []any{})
	}
	// Else every instance would create and share /opt/containerd.
	e.set(`plugins."io.containerd.internal.v1.opt".path`, filepath.Join(d.Dir, "opt"))
	// 1.7 and 2.x listen for NRI plugins on the fixed /var/run/nri/nri.sock
	// (2.x enables NRI by default): parallel instances would take it from
	// each other, and from the machine's own containerd. 1.6's NRI v1 has
	// no socket and no configuration.
	if e.has(`plugins."io.containerd.nri.v1.nri".socket_path`) {
		e.set(`plugins."io.containerd.nri.v1.nri".socket_path`, filepath.Join(d.Dir, "nri.sock"))
	}

	// The CRI. 1.x: config version 2, one plugin; 2.x: version 3 (or
	// later), the runtime and image parts are plugins of their own.
	cri := `plugins."io.containerd.grpc.v1.cri"`
	if isV1(d.Version) {
		e.set(cri+".sandbox_image", imagebuild.PauseRef)
	} else {
		cri = `plugins."io.containerd.cri.v1.runtime"`
		e.set(`plugins."io.containerd.cri.v1.images".pinned_images.sandbox`, imagebuild.PauseRef)
	}
	// As a node runs it (kubeadm's and most distributions' advice): the
	// CRI never gives a container a lower oom_score_adj than containerd's.
	e.set(cri+".restrict_oom_score_adj", true)
	// The CRI creates its CNI configuration directory (default
	// /etc/cni/net.d) and watches it; a private one keeps the host's
	// untouched and its contents out of the tests. The pods use the host's
	// network, so no CNI plugin runs and bin_dir(s) stay as they are.
	e.set(cri+".cni.conf_dir", filepath.Join(d.Dir, "cni"))

	// The handler's runtime: the stock runc entry, options table included,
	// with only the runtime type changed.
	runtimes := cri + ".containerd.runtimes"
	runc, ok := e.get(runtimes + ".runc").(tomlTable)
	if !ok {
		e.fail("%s.runc is not a table", runtimes)
	} else {
		entry := deepCopy(runc).(tomlTable)
		entry["runtime_type"] = d.Runtime
		e.table(runtimes)[criHandler] = entry
	}
	if e.err != nil {
		return nil, fmt.Errorf("containerd %s config: %v", d.Version, e.err)
	}
	return toml.Marshal(cfg)
}

// isV1 tells containerd 1.x (config version 2) from 2.x.
func isV1(version string) bool { return strings.HasPrefix(version, "1.") }

// configEditor sets keys of a decoded config by dotted path (quoted
// segments may hold dots) and remembers the first failure.
type configEditor struct {
	cfg tomlTable
	err error
}

func (e *configEditor) fail(format string, args ...any) {
	if e.err == nil {
		e.err = fmt.Errorf(format, args...)
	}
}

// splitPath splits `plugins."a.b".c` into plugins, a.b and c.
func splitPath(path string) []string {
	var parts []string
	var cur strings.Builder
	quoted := false
	for _, r := range path {
		switch {
		case r == '"':
			quoted = !quoted
		case r == '.' && !quoted:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	return append(parts, cur.String())
}

// lookup returns the table holding path's last key, and that key.
func (e *configEditor) lookup(path string) (tomlTable, string, bool) {
	parts := splitPath(path)
	t := e.cfg
	for _, p := range parts[:len(parts)-1] {
		next, ok := t[p].(tomlTable)
		if !ok {
			return nil, "", false
		}
		t = next
	}
	return t, parts[len(parts)-1], true
}

func (e *configEditor) has(path string) bool {
	t, k, ok := e.lookup(path)
	if !ok {
		return false
	}
	_, ok = t[k]
	return ok
}

func (e *configEditor) get(path string) any {
	t, k, ok := e.lookup(path)
	if !ok {
		return nil
	}
	return t[k]
}

// table returns the table at path, which must exist.
func (e *configEditor) table(path string) tomlTable {
	if t, ok := e.get(path).(tomlTable); ok {
		return t
	}
	e.fail("`config default` has no table %s", path)
	return tomlTable{}
}

// set replaces the value of an existing key.
func (e *configEditor) set(path string, v any) {
	t, k, ok := e.lookup(path)
	if !ok {
		e.fail("`config default` has no table for %s", path)
		return
	}
	if _, ok := t[k]; !ok {
		e.fail("`config default` has no key %s", path)
		return
	}
	t[k] = v
}

// setFirst sets the first of paths that exists.
func (e *configEditor) setFirst(v any, paths ...string) {
	for _, p := range paths {
		if e.has(p) {
			e.set(p, v)
			return
		}
	}
	e.fail("`config default` has none of %s", strings.Join(paths, ", "))
}

func deepCopy(v any) any {
	switch v := v.(type) {
	case tomlTable:
		c := make(tomlTable, len(v))
		for k, x := range v {
			c[k] = deepCopy(x)
		}
		return c
	case []any:
		c := make([]any, len(v))
		for i, x := range v {
			c[i] = deepCopy(x)
		}
		return c
	}
	return v
}

// writeConfig writes d's config.toml.
func (d *Daemon) writeConfig(path string) error {
	b, err := d.buildConfig()
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
