//go:build linux

package integration

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cleanup undoes everything a Daemon may have left, even after a failed or
// aborted test: tasks, containers, containerd, stray shims and their
// containers, runc state, mounts, cgroups, and the temp dir.
func (d *Daemon) cleanup(t testing.TB) {
	if t.Failed() {
		d.dumpLog(t)
	}
	if d.cmd != nil && d.cmd.Process != nil {
		d.removeContainers(t)
		d.stop(t)
	}
	d.killStrayShims(t)
	forceDelete := func(ns, id string) {
		// Left only if a shim died without deleting its container.
		root := filepath.Join("/run/containerd/runc", ns)
		if _, err := os.Stat(filepath.Join(root, id)); err == nil {
			out, err := exec.Command("runc", "--root", root, "delete", "--force", id).CombinedOutput()
			t.Logf("cleanup: runc delete %s: %v %s", id, err, out)
		}
	}
	for _, id := range d.ids {
		forceDelete(d.Namespace, id)
	}
	for _, id := range d.criIDs {
		forceDelete(criNamespace, id)
	}
	unmountUnder(t, d.Dir)
	if err := os.RemoveAll(d.Dir); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	d.removeCgroups()
}

func (d *Daemon) removeContainers(t testing.TB) {
	select {
	case <-d.exited:
		return
	default:
	}
	out, _ := d.ctrQuiet(time.Minute, "task", "ls", "-q")
	for _, id := range strings.Fields(out) {
		t.Logf("cleanup: leftover task %s", id)
		d.ctrQuiet(time.Minute, "task", "kill", "-s", "SIGKILL", id)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if st, _ := d.ctrQuiet(time.Minute, "task", "ls"); !strings.Contains(st, "RUNNING") && !strings.Contains(st, "PAUSED") {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		d.ctrQuiet(time.Minute, "task", "rm", "-f", id)
	}
	out, _ = d.ctrQuiet(time.Minute, "containers", "ls", "-q")
	for _, id := range strings.Fields(out) {
		t.Logf("cleanup: leftover container %s", id)
		d.ctrQuiet(time.Minute, "containers", "rm", id)
	}
}

func (d *Daemon) stop(t testing.TB) {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Logf("cleanup: containerd ignored SIGTERM for 10s, killing it")
		d.cmd.Process.Kill()
		<-d.exited
	}
}

// killStrayShims kills shims still serving this daemon, with everything
// below them (the container processes), by pid.
func (d *Daemon) killStrayShims(t testing.TB) {
	for _, pid := range allPids() {
		args := cmdline(pid)
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == d.Address {
				t.Logf("cleanup: killing stray shim %d %v", pid, args)
				for _, c := range descendants(pid) {
					syscall.Kill(c, syscall.SIGKILL)
				}
				syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	}
}

// unmountUnder detaches every mount below dir (rootfs overlays, shm), the
// deepest first, so that RemoveAll cannot walk into a mounted filesystem.
func unmountUnder(t testing.TB, dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, mp := range mounts {
		t.Logf("cleanup: unmounting leftover %s", mp)
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
			t.Errorf("cleanup: unmount %s: %v", mp, err)
		}
	}
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			ok := true
			for _, o := range s[i+1 : i+4] {
				if o < '0' || o > '7' {
					ok = false
				}
				c = c*8 + byte(o-'0')
			}
			if ok {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeCgroups removes the cgroups runc made for our containers and the
// namespace's parent cgroup, in every hierarchy; rmdir only succeeds on an
// empty cgroup, so one in use stays.
func (d *Daemon) removeCgroups() {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, r := range roots {
		for _, id := range d.ids {
			os.Remove(filepath.Join(r, d.Namespace, id))
		}
		os.Remove(filepath.Join(r, d.Namespace))
	}
	// runc's state root for the namespace, once empty.
	os.Remove(filepath.Join("/run/containerd/runc", d.Namespace))
	// The pods' cgroups: runc removes a container's own cgroup, the kubelet
	// the pod's parent.
	for _, r := range roots {
		for _, parent := range d.criCgroups {
			dir := filepath.Join(r, parent)
			for _, id := range d.criIDs {
				os.Remove(filepath.Join(dir, id))
			}
			os.Remove(dir)
		}
	}
}

// dumpLog prints containerd's log, which holds the shim's log too, leaving
// out the plugin-loading noise of start-up.
func (d *Daemon) dumpLog(t testing.TB) {
	data, err := os.ReadFile(d.logPath)
	if err != nil {
		t.Logf("no containerd log: %v", err)
		return
	}
	var keep []string
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.Contains(l, "loading plugin") && l != "" {
			keep = append(keep, l)
		}
	}
	const max = 400
	if len(keep) > max {
		keep = keep[len(keep)-max:]
	}
	t.Logf("containerd %s log (%s), last %d lines:\n%s", d.Version, d.logPath, len(keep), strings.Join(keep, "\n"))
}
