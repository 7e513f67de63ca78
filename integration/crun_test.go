//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// crun through Keel. Debian 12's crun 1.8.1 refuses cgroup "hybrid" mode,
// so containerd runs in a private mount namespace without the cgroup2
// mount (DaemonOptions.NoUnifiedCgroup), and it rejects the OCI spec
// version containerd 2.x writes, so only containerd 1.6 can run it; on
// 2.4 the user must see crun's own complaint.
//
// TestCrunLifecycle is the dedicated test; KEEL_TEST_OCI_RUNTIME=crun
// runs the whole suite (TestTaskLifecycle and the rest) on crun through
// containerd 1.6 as well, crun standing in for runc in containerd's PATH.

// requireCrun returns crun's path.
func requireCrun(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("crun")
	if err != nil {
		skipOrFail(t, "crun is not installed: %v", err)
	}
	return p
}

// hasMount tells whether mountinfo (of /proc/PID/mountinfo) has a mount
// at path, and of which type.
func hasMount(t *testing.T, mountinfo, path string) (string, bool) {
	t.Helper()
	data, err := os.ReadFile(mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) > 4 && len(g) > 0 && unescapeMount(f[4]) == path {
			return g[0], true
		}
	}
	return "", false
}

// startCrunDaemon starts containerd version v without the cgroup2 mount,
// and checks that only its mount namespace lost it.
func startCrunDaemon(t *testing.T, v string) *Daemon {
	t.Helper()
	_, hybrid := hasMount(t, "/proc/self/mountinfo", unifiedCgroupMount)
	checkHost := func(when string) {
		if typ, ok := hasMount(t, "/proc/self/mountinfo", unifiedCgroupMount); hybrid && (!ok || typ != "cgroup2") {
			t.Errorf("%s, the test process lost its cgroup2 mount at %s (now %q, %v)", when, unifiedCgroupMount, typ, ok)
		}
	}
	// Registered first, so it runs last: after containerd has stopped.
	t.Cleanup(func() { checkHost("after containerd stopped") })
	d := StartContainerdWith(t, v, DaemonOptions{NoUnifiedCgroup: true})
	if typ, ok := hasMount(t, fmt.Sprintf("/proc/%d/mountinfo", d.cmd.Process.Pid), unifiedCgroupMount); ok {
		t.Fatalf("containerd %s still sees a %s mount at %s", v, typ, unifiedCgroupMount)
	}
	checkHost("with containerd running")
	return d
}

// crunList returns the containers `crun list` knows in the namespace's
// runtime root, by ID, with their pids.
func crunList(t *testing.T, crun string, d *Daemon) map[string]int {
	t.Helper()
	out, err := exec.Command(crun, "--root", filepath.Join("/run/containerd/runc", d.Namespace), "list", "--format", "json").Output()
	if err != nil {
		t.Fatalf("crun list: %v", err)
	}
	var list []struct {
		ID  string `json:"id"`
		Pid int    `json:"pid"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("crun list --format json: %v: %s", err, out)
	}
	m := map[string]int{}
	for _, c := range list {
		m[c.ID] = c.Pid
	}
	return m
}

// crunLifecycle drives a running container through exec, ps, pause,
// resume, kill and delete, with ctr, checking all along that crun is the
// runtime that runs it.
func crunLifecycle(t *testing.T, d *Daemon, crun, id string) {
	t.Helper()
	task := d.WaitStatus(t, id, "RUNNING")
	if pid, ok := crunList(t, crun, d)[id]; !ok || pid != task.Pid {
		t.Fatalf("crun list shows %s with pid %d (%v), want the task's pid %d", id, pid, ok, task.Pid)
	}

	out, err := d.Ctr(t, "task", "exec", "--exec-id", "x1", id, "sh", "-c", "echo out; exit 3")
	if code := exitCode(err); code != 3 || out != "out\n" {
		t.Fatalf("exec: exit code %d (%v), stdout %q; want 3 and %q", code, err, out, "out\n")
	}
	d.CheckPsPauseResume(t, id, task.Pid)
	// Exec works again after the resume.
	if out, err := d.Ctr(t, "task", "exec", "--exec-id", "x2", id, "echo", "resumed"); err != nil || out != "resumed\n" {
		t.Fatalf("exec after resume: %q, %v", out, err)
	}

	d.KillAndRemove(t, id)
	if _, ok := crunList(t, crun, d)[id]; ok {
		t.Fatalf("crun still lists %s after task rm", id)
	}
	if _, err := d.Ctr(t, "containers", "rm", id); err != nil {
		t.Fatal(err)
	}
	waitNoShim(t, d, id)
}

// TestCrunLifecycle runs containers on crun through containerd 1.6, with
// BinaryName given in runc's options (Go client) and in the CRI's TOML
// form (`ctr run --runtime-config-path`), and checks that containerd 2.4
// shows crun's refusal of its spec.
func TestCrunLifecycle(t *testing.T) {
	crun := requireCrun(t)
	t.Run("1.6", func(t *testing.T) {
		skipUnlessVersion(t, "1.6")
		d := startCrunDaemon(t, "1.6")

		t.Run("runc-options", func(t *testing.T) {
			c, ctx := d.Client(t)
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			id := d.NewID("crun")
			// The Go client writes the spec itself, with its own (newer)
			// version: write the one containerd 1.6 does.
			cont := newClientContainer(t, d, c, ctx, id, &options.Options{BinaryName: crun}, 0,
				oci.WithProcessArgs("sleep", "1000"), withSpecVersion(spec16Version))
			task, err := cont.NewTask(ctx, cio.NullIO)
			if err != nil {
				t.Fatal(err)
			}
			if err := task.Start(ctx); err != nil {
				t.Fatal(err)
			}
			crunLifecycle(t, d, crun, id)
		})
		t.Run("cri-toml", func(t *testing.T) {
			if !isKeelRuntime(d) {
				t.Skip("the reference shim does not take runtimeoptions.v1.Options")
			}
			cfg := filepath.Join(t.TempDir(), "crun.toml")
			if err := os.WriteFile(cfg, []byte(fmt.Sprintf("BinaryName = %q\n", crun)), 0o644); err != nil {
				t.Fatal(err)
			}
			id := d.NewID("cruntoml")
			if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, "--runtime-config-path", cfg, imageRef, id, "sleep", "1000"); err != nil {
				t.Fatal(err)
			}
			crunLifecycle(t, d, crun, id)
		})
	})
	t.Run("2.4", func(t *testing.T) {
		skipUnlessVersion(t, "2.4")
		d := startCrunDaemon(t, "2.4")
		id := d.NewID("crun24")
		// ctr 2.4 writes the spec as containerd 2.4 does. Keel takes the
		// binary in the CRI's TOML form; runc's shim through --runc-binary.
		args := []string{"run", "-d", "--runtime", d.Runtime}
		if isKeelRuntime(d) {
			cfg := filepath.Join(t.TempDir(), "crun.toml")
			if err := os.WriteFile(cfg, []byte(fmt.Sprintf("BinaryName = %q\n", crun)), 0o644); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--runtime-config-path", cfg)
		} else {
			args = append(args, "--runc-binary", crun)
		}
		_, err := d.Ctr(t, append(args, imageRef, id, "sleep", "1000")...)
		if err == nil {
			t.Fatalf("crun ran containerd 2.4's spec; want its refusal (`unknown version specified`)")
		}
		if !strings.Contains(err.Error(), "unknown version specified") {
			t.Fatalf("ctr run error does not carry crun's own message %q: %v", "unknown version specified", err)
		}
		if _, ok := d.Tasks(t)[id]; ok {
			t.Errorf("task %s listed after its failed creation", id)
		}
		waitNoShim(t, d, id)
		if _, ok := crunList(t, crun, d)[id]; ok {
			t.Errorf("crun lists %s after its failed creation", id)
		}
	})
}

// clientSpecOpts are what a spec the Go client writes needs to run here:
// with KEEL_TEST_OCI_RUNTIME=crun on containerd 1.6, the version 1.6
// writes, which crun 1.8 takes (the client's own is too new for it).
func (d *Daemon) clientSpecOpts() []oci.SpecOpts {
	if d.opts.OCIRuntime == "crun" && d.Version == "1.6" {
		return []oci.SpecOpts{withSpecVersion(spec16Version)}
	}
	return nil
}

// spec16Version is the OCI spec version containerd 1.6 writes.
const spec16Version = "1.0.2-dev"

// withSpecVersion sets the spec's ociVersion.
func withSpecVersion(v string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Version = v
		return nil
	}
}
