//go:build linux

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// This file checks that runtime options reach Keel and the OCI runtime:
// runc's Options through the Go client (what `ctr run --runc-binary` and
// the CRI send runc's shim), the CRI's generic runtimeoptions form (what
// the CRI sends any other runtime type, Keel's included), bad options,
// ShimCgroup, and `-info`. containerd 1.6-2.2 send the options on the
// shim's stdin at start and in Create; 2.3+ in the bootstrap params
// (an extension) and in Create.

// optRun runs the container's task to its end with stdout and stderr
// captured, deletes the task and returns its exit status and output.
// A failed NewTask is returned as is.
func optRun(t *testing.T, ctx context.Context, cont containerd.Container, opts ...containerd.NewTaskOpts) (uint32, string, error) {
	t.Helper()
	var out syncBuffer
	task, err := cont.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &out, &out)), opts...)
	if err != nil {
		return 0, "", err
	}
	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var code uint32
	select {
	case st := <-exitC:
		if code, _, err = st.Result(); err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("task %s did not exit within 30s", cont.ID())
	}
	st, err := task.Delete(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode() != code {
		t.Fatalf("Delete reports exit status %d, Wait %d", st.ExitCode(), code)
	}
	return code, out.String(), nil
}

// runtimeWrapper writes a script that logs each command line it gets to a
// file and then execs runc with it, for BinaryName: its log proves that
// the option reached the runtime. It returns the script and its log.
func runtimeWrapper(t *testing.T) (script, log string) {
	t.Helper()
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script, log = filepath.Join(dir, "runc-wrapper"), filepath.Join(dir, "argv.log")
	body := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\nexec %s \"$@\"\n", log, runc)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, log
}

// runtimeOps returns the runtime commands (create, start, delete, ...)
// the wrapper logged for container id, in order.
func runtimeOps(t *testing.T, log, id string) []string {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatalf("the runtime wrapper was never run: %v", err)
	}
	known := map[string]bool{"create": true, "start": true, "delete": true, "kill": true, "state": true,
		"exec": true, "ps": true, "pause": true, "resume": true, "update": true, "checkpoint": true, "restore": true}
	var ops []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[len(f)-1] != id {
			continue
		}
		for _, w := range f {
			if known[w] {
				ops = append(ops, w)
				break
			}
		}
	}
	return ops
}

// checkRuntimeOps checks that the wrapper ran create, start and delete
// for id, in that order.
func checkRuntimeOps(t *testing.T, log, id string) {
	t.Helper()
	ops := runtimeOps(t, log, id)
	c, s, d := slices.Index(ops, "create"), slices.Index(ops, "start"), slices.Index(ops, "delete")
	if c < 0 || s < 0 || d < 0 || !(c < s && s < d) {
		data, _ := os.ReadFile(log)
		t.Fatalf("runtime wrapper saw %v for %s, want create, start, delete in order; its log:\n%s", ops, id, data)
	}
	t.Logf("the runtime wrapper ran %v for %s", ops, id)
}

// TestRuntimeOptions checks that runtime options given to the Go client's
// WithRuntime reach the OCI runtime, in runc's form and in the CRI's
// generic TOML form, and that bad ones fail the task's creation clearly
// and leave no shim behind.
func TestRuntimeOptions(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		c, ctx := d.Client(t)
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()

		t.Run("runc-options", func(t *testing.T) {
			id := d.NewID("optrunc")
			cont := newClientContainer(t, d, c, ctx, id, &options.Options{BinaryName: "runc"}, 0,
				oci.WithProcessArgs("sh", "-c", "echo options-ok; exit 7"))
			code, out, err := optRun(t, ctx, cont)
			if err != nil {
				t.Fatal(err)
			}
			if code != 7 || out != "options-ok\n" {
				t.Fatalf("exit status %d, output %q; want 7 and %q", code, out, "options-ok\n")
			}
		})

		t.Run("binary-name", func(t *testing.T) {
			wrapper, log := runtimeWrapper(t)
			id := d.NewID("optbin")
			cont := newClientContainer(t, d, c, ctx, id, &options.Options{BinaryName: wrapper}, 0,
				oci.WithProcessArgs("sh", "-c", "echo via-wrapper"))
			code, out, err := optRun(t, ctx, cont)
			if err != nil {
				t.Fatal(err)
			}
			if code != 0 || out != "via-wrapper\n" {
				t.Fatalf("exit status %d, output %q; want 0 and %q", code, out, "via-wrapper\n")
			}
			checkRuntimeOps(t, log, id)
		})

		t.Run("cri-toml", func(t *testing.T) {
			wrapper, log := runtimeWrapper(t)
			id := d.NewID("opttoml")
			body := fmt.Sprintf("BinaryName = %q\nSystemdCgroup = false\n", wrapper)
			cont := newClientContainer(t, d, c, ctx, id, &runtimeoptions.Options{ConfigBody: []byte(body)}, 0,
				oci.WithProcessArgs("sh", "-c", "echo via-toml"))
			code, out, err := optRun(t, ctx, cont)
			if err != nil && !isKeelRuntime(d) {
				// containerd's runc shim takes only runc's Options (the CRI
				// sends it those, never the generic form).
				t.Skipf("the reference shim refuses runtimeoptions.v1.Options: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			if code != 0 || out != "via-toml\n" {
				t.Fatalf("exit status %d, output %q; want 0 and %q", code, out, "via-toml\n")
			}
			checkRuntimeOps(t, log, id)
		})

		bad := []struct {
			name string
			opts any
			want []string // all in the error
		}{
			{"unrelated-type", &types.Mount{Type: "bind"}, []string{"containerd.types.Mount"}},
			{"unknown-toml-key", &runtimeoptions.Options{ConfigBody: []byte("NoSuchOption = 1\n")}, []string{"NoSuchOption"}},
			{"bad-toml-value", &runtimeoptions.Options{ConfigBody: []byte("SystemdCgroup = \"yes\"\n")}, []string{"SystemdCgroup"}},
		}
		for _, tc := range bad {
			t.Run("bad-"+tc.name, func(t *testing.T) {
				id := d.NewID("optbad")
				cont := newClientContainer(t, d, c, ctx, id, tc.opts, 0, oci.WithProcessArgs("true"))
				code, out, err := optRun(t, ctx, cont)
				if err == nil {
					t.Fatalf("task with options %T ran (exit status %d, output %q); want its creation to fail", tc.opts, code, out)
				}
				t.Logf("NewTask failed as it should: %v (invalid argument: %v, code %v)", err, errdefs.IsInvalidArgument(err), status.Code(err))
				// The reference shim fails these without naming the option:
				// it cannot decode runtimeoptions ("type with url
				// runtimeoptions.v1.Options: not found"), and another type
				// makes it panic in Create ("ttrpc: closed").
				for _, w := range tc.want {
					if isKeelRuntime(d) && !strings.Contains(err.Error(), w) {
						t.Fatalf("NewTask error does not name %q: %v", w, err)
					}
				}
				if _, err := cont.Task(ctx, nil); err == nil {
					t.Errorf("a task of %s exists after its creation failed", id)
				}
				waitNoShim(t, d, id)
			})
		}
	})
}

// isKeelRuntime tells whether the tests drive Keel, not the reference shim.
func isKeelRuntime(d *Daemon) bool { return d.Runtime == defaultRuntime }

// skipUnlessVersion skips a test of containerd v that KEEL_TEST_VERSIONS
// leaves out, for tests that pick their versions themselves.
func skipUnlessVersion(t *testing.T, v string) {
	t.Helper()
	if env := os.Getenv("KEEL_TEST_VERSIONS"); env != "" && !slices.Contains(strings.Split(env, ","), v) {
		t.Skipf("KEEL_TEST_VERSIONS=%s", env)
	}
}

// TestShimCgroup checks the ShimCgroup option: the shim daemon is moved
// into that cgroup (on this cgroup v1 host, in every hierarchy) before it
// starts the container. "existing": the operator made the cgroup (as
// systemd or a node agent would), with cpuset.cpus and cpuset.mems set;
// "created": Keel makes it (containerd's runc shim only joins an existing
// one, so that case is Keel's alone).
func TestShimCgroup(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		c, ctx := d.Client(t)
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		hierarchies := v1Hierarchies(t)
		for _, precreate := range []bool{true, false} {
			name := map[bool]string{true: "existing", false: "created"}[precreate]
			t.Run(name, func(t *testing.T) {
				id := d.NewID("shimcg")
				cg := "/keeltest-shim-" + id
				t.Cleanup(func() {
					// Runs after the container's removal (cleanups run in
					// reverse); a cgroup empties once its shim has exited.
					for deadline := time.Now().Add(10 * time.Second); len(d.ShimPids(id)) > 0 && time.Now().Before(deadline); {
						time.Sleep(50 * time.Millisecond)
					}
					for _, h := range hierarchies {
						dir := filepath.Join(h, cg)
						if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
							t.Errorf("cleanup: rmdir %s: %v", dir, err)
						}
					}
				})
				if precreate {
					makeV1Cgroup(t, hierarchies, cg)
				}
				cont := newClientContainer(t, d, c, ctx, id, &options.Options{ShimCgroup: cg}, 0, oci.WithProcessArgs("sleep", "1000"))
				task, err := cont.NewTask(ctx, cio.NullIO)
				if err != nil && !precreate && !isKeelRuntime(d) {
					t.Skipf("containerd's runc shim joins only an existing cgroup: %v", err)
				}
				if err != nil {
					t.Fatal(err)
				}
				if err := task.Start(ctx); err != nil {
					t.Fatal(err)
				}
				shim := d.ShimOf(t, id, int(task.Pid()))
				got := procCgroups(t, shim)
				for _, h := range hierarchies {
					ctrl := filepath.Base(h)
					if ctrl == "systemd" {
						ctrl = "name=systemd"
					}
					if got[ctrl] != cg {
						t.Errorf("shim %d is in %s cgroup %q, want %q; /proc/%d/cgroup: %v", shim, ctrl, got[ctrl], cg, shim, got)
					}
				}
				// The container itself is in a cgroup of its own.
				if ct := procCgroups(t, int(task.Pid()))["memory"]; !strings.HasSuffix(ct, "/"+id) {
					t.Errorf("container init is in memory cgroup %q, want its own (ending in /%s)", ct, id)
				}
				procs, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", cg, "cgroup.procs"))
				if err != nil || !slices.Contains(strings.Fields(string(procs)), fmt.Sprint(shim)) {
					t.Errorf("memory cgroup %s lists %q (%v), want the shim %d", cg, procs, err, shim)
				}
				if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
					t.Fatal(err)
				}
				if err := cont.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
					t.Fatal(err)
				}
				waitNoShim(t, d, id)
			})
		}
	})
}

// makeV1Cgroup makes cgroup path in each hierarchy, as an operator would:
// a new cpuset cgroup has no CPUs or memory nodes, so they are copied from
// the parent, or no process could join it.
func makeV1Cgroup(t *testing.T, hierarchies []string, path string) {
	t.Helper()
	for _, h := range hierarchies {
		dir := filepath.Join(h, path)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			v, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// v1Hierarchies lists the cgroup v1 hierarchies mounted under
// /sys/fs/cgroup (a hybrid host's cgroup2 mount excluded).
func v1Hierarchies(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) > 4 && len(g) > 0 && g[0] == "cgroup" && strings.HasPrefix(f[4], "/sys/fs/cgroup/") {
			dirs = append(dirs, unescapeMount(f[4]))
		}
	}
	if len(dirs) == 0 {
		t.Skip("no cgroup v1 hierarchy under /sys/fs/cgroup: ShimCgroup is checked on cgroup v1 hosts")
	}
	return dirs
}

// procCgroups maps each cgroup v1 controller of /proc/PID/cgroup to the
// process's path in it.
func procCgroups(t *testing.T, pid int) map[string]string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, ctrl := range strings.Split(parts[1], ",") {
			if ctrl != "" {
				m[ctrl] = parts[2]
			}
		}
	}
	return m
}

// featuresTypeURL is the type URL containerd registers for the OCI
// runtime features (JSON) in a RuntimeInfo.
const featuresTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"

// shimInfo runs the shim binary with -info and the runtime options on
// stdin, as containerd 2.x does, and decodes its RuntimeInfo.
func shimInfo(t *testing.T, shim string, opts *options.Options) *types.RuntimeInfo {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(opts)
	if err != nil {
		t.Fatal(err)
	}
	in, err := proto.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, shim, "-info")
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s -info (BinaryName %q): %v\nstderr: %s", shim, opts.BinaryName, err, stderr.String())
	}
	var info types.RuntimeInfo
	if err := proto.Unmarshal(out, &info); err != nil {
		t.Fatalf("%s -info printed no RuntimeInfo: %v\nstdout %q\nstderr %s", shim, err, out, stderr.String())
	}
	t.Logf("%s -info (BinaryName %q): name %q version %v features %v; stderr %q",
		filepath.Base(shim), opts.BinaryName, info.Name, info.Version, info.Features.GetTypeUrl(), stderr.String())
	return &info
}

// checkRuncFeatures checks a RuntimeInfo's Features: runc's `features`
// JSON under containerd's type URL.
func checkRuncFeatures(t *testing.T, features interface {
	GetTypeUrl() string
	GetValue() []byte
}) {
	t.Helper()
	if features == nil || features.GetTypeUrl() != featuresTypeURL {
		t.Fatalf("RuntimeInfo.Features has type URL %q, want %q", features.GetTypeUrl(), featuresTypeURL)
	}
	var f map[string]any
	if err := json.Unmarshal(features.GetValue(), &f); err != nil {
		t.Fatalf("Features value is not JSON: %v: %q", err, features.GetValue())
	}
	if v, _ := f["ociVersionMax"].(string); v == "" {
		t.Fatalf("Features JSON has no ociVersionMax: %s", features.GetValue())
	}
}

// TestShimInfo checks `-info`: the shim prints a RuntimeInfo with the OCI
// runtime's features (runc has a `features` command; crun 1.8 has none,
// which must not fail -info), and containerd 2.x relays it to clients.
func TestShimInfo(t *testing.T) {
	requireSetup(t)
	shim := filepath.Join(shimDir, shimBinaryName())
	if runtimeName() != defaultRuntime {
		// containerd 1.6's runc shim has no -info: take 2.4's.
		dir, err := binDir("2.4")
		if err != nil {
			t.Fatal(err)
		}
		shim = filepath.Join(dir, shimBinaryName())
	}
	if _, err := os.Stat(shim); err != nil {
		skipOrFail(t, "no shim binary to run -info on: %v", err)
	}

	t.Run("runc", func(t *testing.T) {
		info := shimInfo(t, shim, &options.Options{BinaryName: "runc"})
		if info.Name != runtimeName() {
			t.Errorf("RuntimeInfo.Name %q, want %q", info.Name, runtimeName())
		}
		if info.GetVersion().GetVersion() == "" {
			t.Errorf("RuntimeInfo has no version: %v", info.Version)
		}
		checkRuncFeatures(t, info.Features)
		var got options.Options
		if info.Options == nil || proto.Unmarshal(info.Options.Value, &got) != nil || got.BinaryName != "runc" {
			t.Errorf("RuntimeInfo.Options %v, want the options given (BinaryName runc)", info.Options)
		}
	})
	t.Run("crun", func(t *testing.T) {
		if _, err := exec.LookPath("crun"); err != nil {
			skipOrFail(t, "crun is not installed: %v", err)
		}
		info := shimInfo(t, shim, &options.Options{BinaryName: "crun"})
		if info.Name != runtimeName() {
			t.Errorf("RuntimeInfo.Name %q, want %q", info.Name, runtimeName())
		}
		if out, err := exec.Command("crun", "features").CombinedOutput(); err == nil {
			checkRuncFeatures(t, info.Features)
		} else if info.Features != nil {
			t.Errorf("crun has no `features` (%v: %s), yet RuntimeInfo.Features is %v", err, bytes.TrimSpace(out), info.Features)
		}
	})
	// containerd 2.x runs `-info` itself for its introspection API.
	for _, v := range []string{"2.2", "2.4"} {
		t.Run("containerd-"+v, func(t *testing.T) {
			skipUnlessVersion(t, v)
			d := StartContainerd(t, v)
			c, ctx := d.Client(t)
			info, err := c.RuntimeInfo(ctx, d.Runtime, &options.Options{BinaryName: "runc"})
			if err != nil {
				t.Fatalf("RuntimeInfo(%s): %v", d.Runtime, err)
			}
			t.Logf("RuntimeInfo via containerd %s: name %q version %v features %T", v, info.Name, info.Version, info.Features)
			if info.Name != d.Runtime {
				t.Errorf("RuntimeInfo.Name %q, want %q", info.Name, d.Runtime)
			}
			b, err := json.Marshal(info.Features)
			if err != nil || !bytes.Contains(b, []byte(`"ociVersionMax"`)) {
				t.Errorf("RuntimeInfo.Features %s (%v): want runc's features with ociVersionMax", b, err)
			}
		})
	}
}
