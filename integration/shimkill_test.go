//go:build linux

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestShimKilled: when a shim dies (SIGKILL), containerd's cleanup runs
// `containerd-shim-keel-v2 delete`, which must remove the container: its
// runtime state, its rootfs mount, its processes and the dead shim's
// socket.
func TestShimKilled(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("shimkill")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		task := d.WaitStatus(t, id, "RUNNING")
		shim, sockets := shimAndSockets(t, d, id, task.Pid)
		rootfs := filepath.Join(d.BundleDir(id), "rootfs")
		if !mounted(rootfs) {
			t.Fatalf("%s is not a mount point while the container runs", rootfs)
		}

		if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitShimGone(t, d, id, shim, sockets)

		deadline := time.Now().Add(15 * time.Second)
		state := filepath.Join("/run/containerd/runc", d.Namespace, id)
		for {
			_, stateErr := os.Stat(state)
			tasks := d.Tasks(t)
			_, listed := tasks[id]
			done := os.IsNotExist(stateErr) && !mounted(rootfs) && exited(task.Pid) &&
				(!listed || tasks[id].Status == "STOPPED")
			if done {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the shim died: runtime state %v, rootfs mounted %v, init %d exited %v, task %+v",
					stateErr, mounted(rootfs), task.Pid, exited(task.Pid), tasks[id])
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// mounted tells whether dir is a mount point, from /proc/self/mountinfo.
func mounted(dir string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && unescapeMount(f[4]) == dir {
			return true
		}
	}
	return false
}
