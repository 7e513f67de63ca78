//go:build linux

package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keel-shim/keel/process/stdio"
	"github.com/keel-shim/keel/runtime"
)

// DefaultRuntimeRoot is the runtime state root, one directory per
// namespace below it, as containerd's runc shim uses: `runc list` there
// shows containers of either shim.
const DefaultRuntimeRoot = "/run/containerd/runc"

// maxIDLength bounds container and exec IDs (containerd allows 76).
const maxIDLength = 76

// validateID refuses IDs that could escape a directory or confuse the
// runtime: containerd's identifier rule, letters and digits separated by
// single '.', '_' or '-'.
func validateID(id string) error {
	if id == "" || len(id) > maxIDLength {
		return fmt.Errorf("id %q: must be 1 to %d characters: %w", id, maxIDLength, errdefs.ErrInvalidArgument)
	}
	prevSep := true
	for _, r := range id {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		sep := r == '.' || r == '_' || r == '-'
		if !alnum && !sep || sep && prevSep {
			return fmt.Errorf("id %q: only letters and digits separated by single '.', '_' or '-': %w", id, errdefs.ErrInvalidArgument)
		}
		prevSep = sep
	}
	if prevSep {
		return fmt.Errorf("id %q: must end with a letter or digit: %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validateBundle accepts only the bundle containerd makes for id: an
// absolute, clean path ending in the container's ID, with a config.json.
func validateBundle(bundle, id string) error {
	if !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle || filepath.Base(bundle) != id {
		return fmt.Errorf("bundle %q: not an absolute clean path ending in %q: %w", bundle, id, errdefs.ErrInvalidArgument)
	}
	if _, err := os.Stat(filepath.Join(bundle, "config.json")); err != nil {
		return fmt.Errorf("bundle %q: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Options are a container's runtime options: runc's, which containerd and
// the CRI send, and what only the CRI's TOML form (runtimeoptions.v1, also
// `ctr --runtime-config-path`) can carry: Keel's output buffer, and the
// CriuPath that containerd 1.x configs still have.
type Options struct {
	Runc     *options.Options
	Output   stdio.OutputBuffer
	CriuPath string
}

// runtimeOptions decodes the options of a Create (or of the bootstrap),
// falling back to the defaults the shim was started with.
func runtimeOptions(a *anypb.Any, defaults *Options) (*Options, error) {
	if a == nil || a.GetTypeUrl() == "" {
		if defaults != nil {
			return defaults, nil
		}
		return &Options{Runc: &options.Options{}}, nil
	}
	var opts options.Options
	var generic runtimeoptions.Options // what the CRI sends a non-runc runtime type
	switch {
	case isType(a, &opts):
		if err := proto.Unmarshal(a.GetValue(), &opts); err != nil {
			return nil, fmt.Errorf("runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		return &Options{Runc: &opts}, nil
	case isType(a, &generic):
		if err := proto.Unmarshal(a.GetValue(), &generic); err != nil {
			return nil, fmt.Errorf("runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		return optionsFromTOML(&generic)
	}
	return nil, fmt.Errorf("runtime options of type %q, want %s or %s: %w", a.GetTypeUrl(),
		opts.ProtoReflect().Descriptor().FullName(), generic.ProtoReflect().Descriptor().FullName(), errdefs.ErrInvalidArgument)
}

// isRuntimeOptions tells whether a holds runtime options Keel reads.
func isRuntimeOptions(a *anypb.Any) bool {
	return a != nil && (isType(a, &options.Options{}) || isType(a, &runtimeoptions.Options{}))
}

// isType tells whether a holds a message of m's type, named as typeurl
// names it (the full name) or with a type.googleapis.com/ style prefix.
func isType(a *anypb.Any, m proto.Message) bool {
	name := string(m.ProtoReflect().Descriptor().FullName())
	t := a.GetTypeUrl()
	return t == name || strings.HasSuffix(t, "/"+name)
}

// runtimeConfig is how a container's runtime is driven, from its options
// and the cgroupsPath of its spec.
func runtimeConfig(o *Options, ns, bundle, cgroupsPath string) runtime.Config {
	var runc *options.Options
	var criu string
	if o != nil {
		runc, criu = o.Runc, o.CriuPath
	}
	root := runc.GetRoot()
	if root == "" {
		root = DefaultRuntimeRoot
	}
	return runtime.Config{
		Binary:        runc.GetBinaryName(),
		Root:          filepath.Join(root, ns),
		SystemdCgroup: runc.GetSystemdCgroup() || isSystemdCgroupsPath(cgroupsPath),
		CriuPath:      criu,
		LogDir:        bundle,
	}
}

// isSystemdCgroupsPath tells the systemd driver's cgroupsPath,
// "slice:prefix:name" (the slice may be empty), from a cgroupfs path. The
// kubelet with the systemd cgroup driver writes that form; containerd 1.6's
// CRI drops the options table of a runtime that is not runc's, so
// SystemdCgroup = true may never reach Keel, and a runtime driving
// cgroupfs would take the whole string for a directory name.
func isSystemdCgroupsPath(p string) bool {
	parts := strings.Split(p, ":")
	if len(parts) != 3 || strings.HasPrefix(p, "/") || parts[2] == "" {
		return false
	}
	return parts[0] == "" || strings.HasSuffix(parts[0], ".slice")
}

// bundleRuntimeFile keeps the runtime configuration in the bundle, so that
// `delete`, run after the daemon died, drives the same runtime. It is there
// exactly while the runtime may hold the container: Create saves it before
// the runtime makes the container, and Delete removes it once the runtime
// has deleted it.
const bundleRuntimeFile = "keel-runtime.json"

func saveRuntimeConfig(bundle string, cfg runtime.Config) error {
	data, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, bundleRuntimeFile), data, 0o600)
}

// dropRuntimeConfig removes the saved configuration of a container the
// runtime has deleted.
func dropRuntimeConfig(bundle string) error {
	err := os.Remove(filepath.Join(bundle, bundleRuntimeFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// loadRuntimeConfig reads what Create saved, and whether there was a file
// at all. Without one the runtime holds no container of the bundle: the
// daemon died before Create got that far, or Delete deleted it. A torn or
// corrupt file gets the defaults.
func loadRuntimeConfig(bundle, ns string) (runtime.Config, bool) {
	cfg := runtimeConfig(nil, ns, bundle, "")
	data, err := os.ReadFile(filepath.Join(bundle, bundleRuntimeFile))
	if err == nil {
		_ = json.Unmarshal(data, &cfg)
	}
	cfg.LogDir = bundle
	return cfg, !errors.Is(err, os.ErrNotExist)
}
