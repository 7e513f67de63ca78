//go:build linux

package integration

import (
	"strconv"
	"strings"
	"testing"
)

// TestTaskLifecycle drives a detached container through exec, ps, pause,
// resume, kill and delete.
func TestTaskLifecycle(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("life")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		task := d.WaitStatus(t, id, "RUNNING")

		out, err := d.Ctr(t, "task", "exec", "--exec-id", "x1", id, "sh", "-c", "echo out; exit 3")
		if code := exitCode(err); code != 3 {
			t.Fatalf("exec exit code %d (%v), want 3", code, err)
		}
		if out != "out\n" {
			t.Fatalf("exec stdout %q, want %q", out, "out\n")
		}

		d.CheckPsPauseResume(t, id, task.Pid)

		d.KillAndRemove(t, id)
		if _, ok := d.Tasks(t)[id]; ok {
			t.Fatalf("task %s still listed after task rm", id)
		}
		if _, err := d.Ctr(t, "containers", "rm", id); err != nil {
			t.Fatal(err)
		}
		out, err = d.Ctr(t, "containers", "ls", "-q")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, id) {
			t.Fatalf("container %s still listed after containers rm", id)
		}
	})
}

// TaskPids lists a task's pids with `ctr task ps`: a "PID INFO" header,
// then one line per process of the container.
func (d *Daemon) TaskPids(t testing.TB, id string) []int {
	t.Helper()
	out, err := d.Ctr(t, "task", "ps", id)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, line := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 {
			pid, err := strconv.Atoi(f[0])
			if err != nil {
				t.Fatalf("bad `ctr task ps` line %q", line)
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

// CheckPsPauseResume checks that `ctr task ps` lists just the init, and
// that pause and resume show in `ctr task ls`.
func (d *Daemon) CheckPsPauseResume(t testing.TB, id string, initPid int) {
	t.Helper()
	if pids := d.TaskPids(t, id); len(pids) != 1 || pids[0] != initPid {
		t.Fatalf("task ps lists %v, want just the init pid %d", pids, initPid)
	}
	for _, step := range []struct{ cmd, status string }{{"pause", "PAUSED"}, {"resume", "RUNNING"}} {
		if _, err := d.Ctr(t, "task", step.cmd, id); err != nil {
			t.Fatal(err)
		}
		if st := d.Tasks(t)[id].Status; st != step.status {
			t.Fatalf("after %s, status %q, want %s", step.cmd, st, step.status)
		}
	}
}

// KillAndRemove kills a task with SIGKILL, waits until it is STOPPED and
// removes it, checking that the removal reports 137 (128 + SIGKILL).
func (d *Daemon) KillAndRemove(t testing.TB, id string) {
	t.Helper()
	if _, err := d.Ctr(t, "task", "kill", "-s", "SIGKILL", id); err != nil {
		t.Fatal(err)
	}
	d.WaitStatus(t, id, "STOPPED")
	if code := d.TaskRm(t, id); code != 137 {
		t.Fatalf("ctr task rm %s reports exit code %d after SIGKILL, want 137", id, code)
	}
}
