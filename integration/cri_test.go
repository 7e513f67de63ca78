//go:build linux

package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The Kubernetes path: the CRI plugin of every containerd version, driven
// as the kubelet drives it, runs pods of RuntimeClass handler "keel" whose
// runtime entry is the stock runc entry of `containerd config default` with
// runtime_type io.containerd.keel.v2 (config_test.go). Pods use the host's
// network (no CNI) and a cgroupfs parent of their own.

// Container commands. busybox's sh is pid 1 of its container, so SIGTERM
// does not stop it: StopContainer's grace period ends in SIGKILL.
var (
	// ticker logs a line to stdout and one to stderr, then a numbered line
	// every 100ms.
	tickerCmd = []string{"sh", "-c", "echo hello; echo oops >&2; i=0; while :; do i=$((i+1)); echo tick $i; usleep 100000; done"}
	sleepCmd  = []string{"sleep", "100000"}
	// oomCmd allocates and touches 64 MiB in one buffer: dd is the
	// container's init, and the OOM killer's victim.
	oomCmd = []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}
)

// oomLimit is the memory limit of the containers that must be OOM-killed.
const oomLimit = 16 << 20

// TestCRIPod runs a pod through its life as the kubelet does: two
// containers next to the pause container, all served by one shim; ExecSync,
// logs in the CRI format, stats, a resources update checked in the cgroup,
// a container killed by the OOM killer; containerd SIGKILLed and restarted
// under the running pod; then StopPodSandbox and RemovePodSandbox, after
// which no shim, container process, mount or cgroup of the pod is left.
func TestCRIPod(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		c := d.StartCRI(t)
		pod := c.RunPod(t, "lifecycle")
		ticker := c.RunContainer(t, pod, ContainerSpec{Name: "ticker", Command: tickerCmd})
		sleeper := c.RunContainer(t, pod, ContainerSpec{Name: "sleeper", Command: sleepCmd})

		// One shim for the pod: the parent of all three inits.
		procs := map[string]int{"pause": c.Pid(t, pod.ID), "ticker": c.Pid(t, ticker), "sleeper": c.Pid(t, sleeper)}
		shim := checkOneShim(t, c, procs)
		ids := map[string]procIdentity{"shim": identify(t, shim)}
		for name, pid := range procs {
			ids[name] = identify(t, pid)
		}

		t.Run("ExecSync", func(t *testing.T) {
			r := c.ExecSync(t, sleeper, "sh", "-c", "echo out; echo err >&2; exit 3")
			if string(r.Stdout) != "out\n" || string(r.Stderr) != "err\n" || r.ExitCode != 3 {
				t.Errorf("ExecSync: stdout %q, stderr %q, exit code %d; want \"out\\n\", \"err\\n\", 3", r.Stdout, r.Stderr, r.ExitCode)
			}
			const size = 1 << 20
			r = c.ExecSync(t, sleeper, "head", "-c", fmt.Sprint(size), "/dev/zero")
			if len(r.Stdout) != size || !bytes.Equal(r.Stdout, make([]byte, size)) || len(r.Stderr) != 0 || r.ExitCode != 0 {
				t.Errorf("ExecSync of 1 MiB: %d bytes of stdout (want %d zeros), stderr %q, exit code %d", len(r.Stdout), size, r.Stderr, r.ExitCode)
			}
		})

		logPath := c.Status(t, ticker).Status.LogPath
		t.Run("Logs", func(t *testing.T) {
			if want := filepath.Join(pod.LogDir, "ticker", "0.log"); logPath != want {
				t.Errorf("log path %q, want %q", logPath, want)
			}
			var lines []LogLine
			if !pollUntil(5*time.Second, func() bool {
				lines = ReadLog(t, logPath)
				return len(lines) >= 5
			}) {
				t.Fatalf("%s has %d lines after 5s", logPath, len(lines))
			}
			seen := map[string]bool{}
			for _, l := range lines {
				if l.Partial {
					t.Errorf("partial line %+v: every line is short", l)
				}
				seen[l.Stream+" "+l.Text] = true
			}
			for _, want := range []string{"stdout hello", "stderr oops", "stdout tick 1", "stdout tick 2"} {
				if !seen[want] {
					t.Errorf("%s lacks %q; it has %v", logPath, want, lines)
				}
			}
		})

		t.Run("ContainerStats", func(t *testing.T) {
			var st *runtimeapi.ContainerStats
			if !pollUntil(5*time.Second, func() bool {
				r, err := do(c.RT.ContainerStats, &runtimeapi.ContainerStatsRequest{ContainerId: sleeper})
				if err != nil {
					t.Fatalf("ContainerStats: %v", err)
				}
				st = r.Stats
				return st.GetMemory().GetWorkingSetBytes().GetValue() > 0 || st.GetMemory().GetUsageBytes().GetValue() > 0
			}) {
				t.Fatalf("ContainerStats of %s never showed memory in use: %v", sleeper, st)
			}
			t.Logf("stats: memory working set %d, usage %d; cpu %d ns", st.GetMemory().GetWorkingSetBytes().GetValue(),
				st.GetMemory().GetUsageBytes().GetValue(), st.GetCpu().GetUsageCoreNanoSeconds().GetValue())
		})

		t.Run("UpdateContainerResources", func(t *testing.T) {
			res := &runtimeapi.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 64 << 20}
			if _, err := do(c.RT.UpdateContainerResources, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: sleeper, Linux: res}); err != nil {
				t.Fatalf("UpdateContainerResources: %v", err)
			}
			pid := procs["sleeper"]
			mem := cgroupFile(t, pid, "memory", "memory.limit_in_bytes")
			if !strings.Contains(mem, pod.CgroupParent+"/") {
				t.Errorf("container's memory cgroup %s is not below the pod's parent %s", mem, pod.CgroupParent)
			}
			if got := readCgroupInt(t, mem); got != res.MemoryLimitInBytes {
				t.Errorf("%s = %d after the update, want %d", mem, got, res.MemoryLimitInBytes)
			}
			if f := cgroupFile(t, pid, "cpu", "cpu.shares"); readCgroupInt(t, f) != res.CpuShares {
				t.Errorf("%s = %d after the update, want %d", f, readCgroupInt(t, f), res.CpuShares)
			}
		})

		t.Run("OOMKilled", func(t *testing.T) {
			id := c.RunOOM(t, pod)
			st := c.WaitState(t, id, runtimeapi.ContainerState_CONTAINER_EXITED, 20*time.Second)
			if st.Reason != "OOMKilled" || st.ExitCode != 137 {
				t.Errorf("container killed by the OOM killer: reason %q, exit code %d; want OOMKilled, 137", st.Reason, st.ExitCode)
			}
			if _, err := do(c.RT.RemoveContainer, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
				t.Errorf("RemoveContainer: %v", err)
			}
		})

		t.Run("ContainerdKilled", func(t *testing.T) {
			before := len(ReadLog(t, logPath))
			d.Restart(t, true, 0)
			restarted := time.Now()
			c.Reconnect(t)
			for name, id := range map[string]string{"ticker": ticker, "sleeper": sleeper} {
				st := c.Status(t, id).Status
				if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
					t.Errorf("%s after the restart: %v", name, st)
				}
				if pid := c.Pid(t, id); pid != procs[name] {
					t.Errorf("%s's pid after the restart is %d, was %d", name, pid, procs[name])
				}
			}
			for name, p := range ids {
				if !p.alive() {
					t.Errorf("%s (pid %d) did not survive the restart", name, p.Pid)
				}
			}
			if r := c.ExecSync(t, ticker, "echo", "back"); string(r.Stdout) != "back\n" || r.ExitCode != 0 {
				t.Errorf("ExecSync after the restart: stdout %q, exit code %d", r.Stdout, r.ExitCode)
			}
			// The log keeps growing, with lines written after the restart.
			var lines []LogLine
			if !pollUntil(5*time.Second, func() bool {
				lines = ReadLog(t, logPath)
				return len(lines) > before+3 && lines[len(lines)-1].Time.After(restarted)
			}) {
				t.Errorf("%s stopped growing at the restart: %d lines before, %d 5s after: %v", logPath, before, len(lines), lines[max(0, len(lines)-3):])
			}
		})

		t.Run("StopAndRemove", func(t *testing.T) {
			// As the kubelet deletes a pod: its containers with their grace
			// period, then the sandbox, then (garbage collection) all of it.
			if _, err := do(c.RT.StopContainer, &runtimeapi.StopContainerRequest{ContainerId: ticker, Timeout: 1}); err != nil {
				t.Fatalf("StopContainer: %v", err)
			}
			if st := c.Status(t, ticker).Status; st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
				t.Errorf("ticker after StopContainer: %v (want EXITED, 137: sh ignores SIGTERM as pid 1)", st)
			}
			c.RemovePod(t, pod)
			checkPodGone(t, c, pod, ids)
		})
	})
}

// TestCRIOOMAfterRestart: containerd is SIGKILLed and restarted under a
// running pod, and right away a new container of that pod (so in the shim
// that lived through the restart) is killed by the OOM killer. The first
// status the CRI shows once it has exited must already say OOMKilled: the
// CRI sets the reason from the shim's /tasks/oom event, and a kubelet that
// sees "Error" first reports that.
func TestCRIOOMAfterRestart(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		c := d.StartCRI(t)
		pod := c.RunPod(t, "oom-restart")
		c.RunContainer(t, pod, ContainerSpec{Name: "sleeper", Command: sleepCmd})
		d.Restart(t, true, 0)
		c.Reconnect(t)
		start := time.Now()
		id := c.RunOOM(t, pod)
		var first *runtimeapi.ContainerStatus
		deadline := time.Now().Add(20 * time.Second)
		for first == nil && time.Now().Before(deadline) {
			if st := c.Status(t, id).Status; st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
				first = st
			} else {
				time.Sleep(5 * time.Millisecond)
			}
		}
		if first == nil {
			t.Fatalf("container %s did not exit within 20s of being started", id)
		}
		t.Logf("first EXITED status %v after the start: reason %q, exit code %d", time.Since(start).Round(time.Millisecond), first.Reason, first.ExitCode)
		if first.Reason != "OOMKilled" || first.ExitCode != 137 {
			var later string
			if pollUntil(5*time.Second, func() bool { return c.Status(t, id).Status.Reason == "OOMKilled" }) {
				later = "; it says OOMKilled later, so the OOM event came after the exit"
			}
			t.Errorf("first status of the container OOM-killed right after containerd's restart: reason %q, exit code %d; want OOMKilled, 137%s",
				first.Reason, first.ExitCode, later)
		}
		c.RemovePod(t, pod)
	})
}

// RunOOM creates and starts a container in pod that the OOM killer kills
// at once: dd touches 64 MiB under a 16 MiB limit.
func (c *CRI) RunOOM(t testing.TB, pod *Pod) string {
	t.Helper()
	id := c.CreateContainer(t, pod, ContainerSpec{Name: "oom", Command: oomCmd,
		Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: oomLimit}})
	c.StartContainer(t, id)
	return id
}

// checkOneShim checks that one shim process of this runtime serves the
// CRI's namespace of the daemon, and that it is the parent of each init
// in procs. It returns its pid.
func checkOneShim(t *testing.T, c *CRI, procs map[string]int) int {
	t.Helper()
	shims := c.Shims()
	if len(shims) != 1 {
		t.Fatalf("%d %s processes serve namespace %s of containerd %s, want 1 for the pod: %v", len(shims), shimBinaryName(), criNamespace, c.d.Version, shims)
	}
	for name, pid := range procs {
		st, err := readStat(pid)
		if err != nil {
			t.Fatalf("%s's init %d: %v", name, pid, err)
		}
		if st.Ppid != shims[0] {
			t.Errorf("%s's init %d has parent %d (%q), not the pod's shim %d", name, pid, st.Ppid, cmdline(st.Ppid), shims[0])
		}
	}
	return shims[0]
}

// checkPodGone checks what the removal of a pod must leave: no pod or
// container in the CRI, no shim, none of the pod's processes, no mount
// under the daemon's dirs, no runtime state and no cgroup below the pod's
// cgroup parent (which the kubelet removes, and so does the cleanup).
func checkPodGone(t *testing.T, c *CRI, pod *Pod, procs map[string]procIdentity) {
	t.Helper()
	if pods, err := do(c.RT.ListPodSandbox, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(pods.Items) > 0 {
		t.Errorf("ListPodSandbox after the removal: %v %v", pods, err)
	}
	if cs, err := do(c.RT.ListContainers, &runtimeapi.ListContainersRequest{}); err != nil || len(cs.Containers) > 0 {
		t.Errorf("ListContainers after the removal: %v %v", cs, err)
	}
	var alive []string
	// The shim exits once its last container is deleted; give it a moment.
	pollUntil(5*time.Second, func() bool {
		alive = nil
		for name, p := range procs {
			if p.alive() {
				alive = append(alive, fmt.Sprintf("%s (%d: %q)", name, p.Pid, cmdline(p.Pid)))
			}
		}
		return len(alive) == 0 && len(c.Shims()) == 0
	})
	slices.Sort(alive)
	if len(alive) > 0 {
		t.Errorf("still running after RemovePodSandbox: %s", strings.Join(alive, ", "))
	}
	if shims := c.Shims(); len(shims) > 0 {
		t.Errorf("shims still serving namespace %s after RemovePodSandbox: %v", criNamespace, shims)
	}
	if m := mountsUnder(t, c.d.Dir); len(m) > 0 {
		t.Errorf("mounts left under %s after RemovePodSandbox: %v", c.d.Dir, m)
	}
	for _, id := range c.d.criIDs {
		for _, p := range []string{
			filepath.Join("/run/containerd/runc", criNamespace, id),
			filepath.Join(c.d.Dir, "state", "io.containerd.runtime.v2.task", criNamespace, id),
		} {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("%s left after RemovePodSandbox", p)
			}
		}
	}
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, r := range roots {
		ents, err := os.ReadDir(filepath.Join(r, pod.CgroupParent))
		if err != nil {
			continue // not created in this hierarchy, or a file
		}
		for _, e := range ents {
			if e.IsDir() {
				t.Errorf("cgroup %s left after RemovePodSandbox", filepath.Join(r, pod.CgroupParent, e.Name()))
			}
		}
	}
}
