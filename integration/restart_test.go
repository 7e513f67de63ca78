//go:build linux

package integration

import (
	"testing"
	"time"
)

// TestContainerdRestart restarts containerd under running workloads, as a
// chaos test does: first a clean stop, then SIGKILL with a container that
// exits while containerd is away. The workloads keep running, exec and
// kill work on them afterwards, and the exit that happened in the dark is
// reported with its status (containerd 2.x deletes, on reload, the task
// of a shim that lists no pids: Keel must not let that happen).
func TestContainerdRestart(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		run := d.NewID("survivor")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, run, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		before := d.WaitStatus(t, run, "RUNNING")

		d.Restart(t, false, 500*time.Millisecond)
		if after := d.WaitStatus(t, run, "RUNNING"); after.Pid != before.Pid {
			t.Fatalf("after a clean restart the task's pid is %d, was %d", after.Pid, before.Pid)
		}
		out, err := d.Ctr(t, "task", "exec", "--exec-id", "after-stop", run, "echo", "still here")
		if err != nil || out != "still here\n" {
			t.Fatalf("exec after restart: %q, %v", out, err)
		}

		dark := d.NewID("dark")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, dark, "sh", "-c", "sleep 2; exit 7"); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, dark, "RUNNING")
		// Away for longer than the container lives: it exits meanwhile.
		d.Restart(t, true, 4*time.Second)

		d.WaitStatus(t, dark, "STOPPED")
		if status := d.TaskRm(t, dark); status != 7 {
			t.Fatalf("the container that exited while containerd was down reports %d, want 7", status)
		}
		if after := d.WaitStatus(t, run, "RUNNING"); after.Pid != before.Pid {
			t.Fatalf("after SIGKILL of containerd the task's pid is %d, was %d", after.Pid, before.Pid)
		}
		d.KillAndRemove(t, run)
	})
}
