//go:build linux

package shim

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keel-shim/keel/process/fakeruntime"
	"github.com/keel-shim/keel/runtime"
)

func TestValidateID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"abc", true},
		{"a.b-c_d", true},
		{"ABC123", true},
		{"0", true},
		{strings.Repeat("a", 76), true},
		{"", false},
		{strings.Repeat("a", 77), false},
		{"../x", false},
		{"a/b", false},
		{"a\x00b", false},
		{"..", false},
		{".", false},
		{".a", false},
		{"-a", false},
		{"a.", false},
		{"a_", false},
		{"a..b", false},
		{"a.-b", false},
		{"a b", false},
		{"a:b", false},
		{"café", false},
		{"контейнер", false},
	}
	for _, tt := range tests {
		err := validateID(tt.id)
		switch {
		case tt.ok && err != nil:
			t.Errorf("validateID(%q) = %v, want ok", tt.id, err)
		case !tt.ok && !errdefs.IsInvalidArgument(err):
			t.Errorf("validateID(%q) = %v, want InvalidArgument", tt.id, err)
		}
	}
}

func TestValidateBundle(t *testing.T) {
	const id = "c1"
	good := filepath.Join(t.TempDir(), id)
	if err := os.Mkdir(good, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(good, "config.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	noConfig := filepath.Join(t.TempDir(), id)
	if err := os.Mkdir(noConfig, 0o700); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel("/", good)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		bundle string
		ok     bool
	}{
		{"bundle named id with config.json", good, true},
		{"relative path", rel, false},
		{"trailing slash", good + "/", false},
		{"dot-dot component", filepath.Dir(good) + "/x/../" + id, false},
		{"double slash", filepath.Dir(good) + "//" + id, false},
		{"not ending in id", filepath.Dir(good), false},
		{"id only as a prefix", good + "x", false},
		{"missing config.json", noConfig, false},
		{"missing directory", filepath.Join(t.TempDir(), id), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateBundle(tt.bundle, id)
			switch {
			case tt.ok && err != nil:
				t.Errorf("validateBundle(%q) = %v, want ok", tt.bundle, err)
			case !tt.ok && !errdefs.IsInvalidArgument(err):
				t.Errorf("validateBundle(%q) = %v, want InvalidArgument", tt.bundle, err)
			}
		})
	}
}

func TestRuntimeOptions(t *testing.T) {
	want := &options.Options{BinaryName: "crun", Root: "/run/r", SystemdCgroup: true}
	viaTypeurl, err := typeurl.MarshalAnyToProto(want)
	if err != nil {
		t.Fatal(err)
	}
	viaAnypb, err := anypb.New(want)
	if err != nil {
		t.Fatal(err)
	}
	defaults := &options.Options{BinaryName: "runc"}
	wrongType, err := anypb.New(&anypb.Any{TypeUrl: "x"})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		in       *anypb.Any
		defaults *options.Options
		want     *options.Options
		invalid  bool
	}{
		{name: "nil without defaults", in: nil, want: &options.Options{}},
		{name: "nil with defaults", in: nil, defaults: defaults, want: defaults},
		{name: "empty type URL", in: &anypb.Any{}, defaults: defaults, want: defaults},
		{name: "typeurl form", in: viaTypeurl, want: want},
		{name: "type.googleapis.com form", in: viaAnypb, defaults: defaults, want: want},
		{name: "wrong type", in: wrongType, invalid: true},
		{name: "name as a suffix only", in: &anypb.Any{TypeUrl: "xcontainerd.runc.v1.Options"}, invalid: true},
		{name: "malformed value", in: &anypb.Any{TypeUrl: viaTypeurl.GetTypeUrl(), Value: []byte{0xff, 0xff, 0xff}}, invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var defaults *Options
			if tt.defaults != nil {
				defaults = &Options{Runc: tt.defaults}
			}
			got, err := runtimeOptions(tt.in, defaults)
			if tt.invalid {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("runtimeOptions = %v, %v; want InvalidArgument", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got.Runc, tt.want) {
				t.Errorf("runtimeOptions = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRuntimeConfig(t *testing.T) {
	tests := []struct {
		name        string
		opts        *Options
		cgroupsPath string
		want        runtime.Config
	}{
		{
			name: "defaults",
			opts: &Options{Runc: &options.Options{}},
			want: runtime.Config{Root: "/run/containerd/runc/k8s.io", LogDir: "/b/c1"},
		},
		{
			name: "nil options",
			opts: nil,
			want: runtime.Config{Root: "/run/containerd/runc/k8s.io", LogDir: "/b/c1"},
		},
		{
			name: "custom",
			opts: &Options{Runc: &options.Options{BinaryName: "/usr/bin/crun", Root: "/var/run/crun", SystemdCgroup: true}, CriuPath: "/opt/criu"},
			want: runtime.Config{Binary: "/usr/bin/crun", Root: "/var/run/crun/k8s.io", SystemdCgroup: true, CriuPath: "/opt/criu", LogDir: "/b/c1"},
		},
		{
			// containerd 1.6's CRI dropped SystemdCgroup = true; the
			// kubelet's systemd driver still wrote this form.
			name:        "systemd cgroupsPath without the option",
			opts:        &Options{Runc: &options.Options{}},
			cgroupsPath: "kubepods-besteffort-pod1.slice:cri-containerd:c1",
			want:        runtime.Config{Root: "/run/containerd/runc/k8s.io", SystemdCgroup: true, LogDir: "/b/c1"},
		},
		{
			name:        "cgroupfs path",
			opts:        &Options{Runc: &options.Options{}},
			cgroupsPath: "/kubepods/besteffort/pod1/c1",
			want:        runtime.Config{Root: "/run/containerd/runc/k8s.io", LogDir: "/b/c1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := runtimeConfig(tt.opts, "k8s.io", "/b/c1", tt.cgroupsPath); got != tt.want {
				t.Errorf("runtimeConfig = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestIsSystemdCgroupsPath(t *testing.T) {
	for p, want := range map[string]bool{
		"system.slice:runc:434234": true,
		":cri-containerd:c1":       true,
		"kubepods.slice:crio:x":    true,
		"":                         false,
		"/kubepods/pod1/c1":        false,
		"keeltest/c1":              false,
		"/a:b:c":                   false,
		"notaslice:prefix:name":    false,
		"system.slice:runc:":       false,
		"a.slice:b:c:d":            false,
	} {
		if got := isSystemdCgroupsPath(p); got != want {
			t.Errorf("isSystemdCgroupsPath(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestSaveLoadRuntimeConfig(t *testing.T) {
	bundle := t.TempDir()
	cfg := runtime.Config{Binary: "/usr/bin/crun", Root: "/var/run/crun/default", SystemdCgroup: true, LogDir: bundle}
	if err := saveRuntimeConfig(bundle, cfg); err != nil {
		t.Fatal(err)
	}
	if got, saved := loadRuntimeConfig(bundle, "default"); got != cfg || !saved {
		t.Errorf("round trip = %+v, %v, want %+v, true", got, saved, cfg)
	}
	fi, err := os.Stat(filepath.Join(bundle, bundleRuntimeFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("saved config mode %o, want 600", perm)
	}

	// A bundle that was moved: LogDir follows the bundle, not the file.
	moved := filepath.Join(t.TempDir(), "moved")
	if err := os.Rename(bundle, moved); err != nil {
		t.Fatal(err)
	}
	if got, _ := loadRuntimeConfig(moved, "default"); got.LogDir != moved || got.Binary != cfg.Binary {
		t.Errorf("after move = %+v, want LogDir %q and the saved binary", got, moved)
	}
}

func TestLoadRuntimeConfigDefaults(t *testing.T) {
	want := runtime.Config{Root: "/run/containerd/runc/ns1"}

	empty := t.TempDir()
	want.LogDir = empty
	if got, saved := loadRuntimeConfig(empty, "ns1"); got != want || saved {
		t.Errorf("without a saved config = %+v, %v, want %+v, false", got, saved, want)
	}

	// A torn or corrupt file is no config at all.
	corrupt := t.TempDir()
	if err := os.WriteFile(filepath.Join(corrupt, bundleRuntimeFile), []byte(`{"Binary":"/x",`), 0o600); err != nil {
		t.Fatal(err)
	}
	want.LogDir = corrupt
	if got, saved := loadRuntimeConfig(corrupt, "ns1"); got != want || !saved {
		t.Errorf("with a corrupt config = %+v, %v, want %+v, true", got, saved, want)
	}
}

func TestSocketPath(t *testing.T) {
	const addr, ns, group = "/run/containerd/containerd.sock", "default", "c1"
	p := SocketPath("", addr, ns, group)
	if p != SocketPath("", addr, ns, group) {
		t.Error("SocketPath is not deterministic")
	}
	if filepath.Dir(p) != DefaultSocketDir {
		t.Errorf("SocketPath with no dir = %q, want it in %s", p, DefaultSocketDir)
	}
	if base := filepath.Base(p); len(base) != 64 || strings.Trim(base, "0123456789abcdef") != "" {
		t.Errorf("socket name %q is not a hex sha256", base)
	}
	if got := SocketPath("/tmp/k", addr, ns, group); got != filepath.Join("/tmp/k", filepath.Base(p)) {
		t.Errorf("SocketPath in /tmp/k = %q, want the same name in that dir", got)
	}
	others := map[string]string{
		"address": SocketPath("", "/run/other.sock", ns, group),
		"ns":      SocketPath("", addr, "k8s.io", group),
		"group":   SocketPath("", addr, ns, "c2"),
	}
	for what, o := range others {
		if o == p {
			t.Errorf("a different %s gives the same socket %s", what, p)
		}
	}
	// Even the longest form fits a unix socket address (108 bytes).
	if n := len(SocketPath(DefaultSocketDir, addr, ns, group)); n >= 108 {
		t.Errorf("default socket path is %d bytes", n)
	}

	if a := SocketAddress(p); a != "unix://"+p || socketPathOf(a) != p {
		t.Errorf("SocketAddress/socketPathOf round trip: %q -> %q", p, a)
	}
}

// acceptLoop serves l until it is closed, as a running shim would.
func acceptLoop(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

func TestListen(t *testing.T) {
	// Short paths: the limit of a unix socket address is 108 bytes.
	base, err := os.MkdirTemp("/tmp", "k")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	dir := filepath.Join(base, "s")
	path := filepath.Join(dir, "sock")

	l1, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	go acceptLoop(l1)

	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want a 0600 socket", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("socket dir mode = %v, want 0700", di.Mode())
	}

	// A second shim for the same group finds the first one serving.
	if l2, err := Listen(path); !errors.Is(err, errInUse) {
		if l2 != nil {
			l2.Close()
		}
		t.Fatalf("second Listen = %v, want errInUse", err)
	}

	// The first shim dies; its socket file stays (SetUnlinkOnClose(false)).
	l1.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("closing the listener removed the socket: %v", err)
	}
	l3, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l3.Close()
	go acceptLoop(l3)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the replacement listener: %v", err)
	}
	c.Close()
}

func TestListenTightensDir(t *testing.T) {
	// An existing, too open directory is made owner-only.
	base, err := os.MkdirTemp("/tmp", "k")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(filepath.Join(base, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	di, err := os.Stat(base)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("dir mode = %v, want 0700", di.Mode())
	}
}

// TestDeleteDropsRuntimeConfig: the runtime config is in the bundle while
// the runtime may hold the container, from Create until the shim's Delete
// has deleted it, so that the `delete` containerd runs next leaves the
// runtime alone.
func TestDeleteDropsRuntimeConfig(t *testing.T) {
	r := testReaper(t)
	dir := t.TempDir()
	rt, err := fakeruntime.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := fakeruntime.Bundle(dir, "c1", false)
	if err != nil {
		t.Fatal(err)
	}
	svc := NewService("ns", discardLog(), r, NewPublisher("", "ns", discardLog()), &Options{Runc: &options.Options{BinaryName: rt.Binary, Root: rt.Root}}, func() {})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := svc.Create(ctx, &taskapi.CreateTaskRequest{ID: "c1", Bundle: bundle}); err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(bundle, bundleRuntimeFile)
	if _, err := os.Stat(saved); err != nil {
		t.Fatalf("after Create: %v", err)
	}
	if _, err := svc.Kill(ctx, &taskapi.KillRequest{ID: "c1", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(saved); err != nil {
		t.Fatalf("after the exit, before Delete: %v", err)
	}
	if _, err := svc.Delete(ctx, &taskapi.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(saved); !os.IsNotExist(err) {
		t.Fatalf("after Delete the runtime config is still there (%v)", err)
	}
	if got := strings.Join(rt.Calls(), " "); got != "create kill delete" {
		t.Fatalf("runtime calls %q, want create kill delete", got)
	}
}
