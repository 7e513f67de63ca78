//go:build linux

package integration

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"
)

// TestNoShimFdsInContainer: nothing the shim holds (its socket, FIFOs,
// other containers' pipes, cgroup watches) reaches a container's init or
// exec process: each has exactly stdin, stdout and stderr.
func TestNoShimFdsInContainer(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("fds")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		task := d.WaitStatus(t, id, "RUNNING")
		checkOnlyStdio(t, "init", task.Pid)

		if _, err := d.Ctr(t, "task", "exec", "-d", "--exec-id", "x", id, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		shim := d.ShimOf(t, id, task.Pid)
		// runc exec returns once its init is ready, before that execs
		// sleep: under load the exec is still "runc init" for a while.
		var execPid int
		pollUntil(5*time.Second, func() bool {
			for _, pid := range descendants(shim) {
				if pid != task.Pid && len(cmdline(pid)) > 0 && cmdline(pid)[0] == "sleep" {
					execPid = pid
				}
			}
			return execPid != 0
		})
		if execPid == 0 {
			t.Fatalf("no exec'd sleep found below shim %d", shim)
		}
		checkOnlyStdio(t, "exec", execPid)

		if _, err := d.Ctr(t, "task", "kill", "-s", "SIGKILL", id); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, id, "STOPPED")
		d.TaskRm(t, id)
	})
}

func checkOnlyStdio(t *testing.T, what string, pid int) {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var fds []int
	for _, e := range entries {
		n, _ := strconv.Atoi(e.Name())
		fds = append(fds, n)
	}
	sort.Ints(fds)
	if len(fds) != 3 || fds[0] != 0 || fds[1] != 1 || fds[2] != 2 {
		var targets []string
		for _, fd := range fds {
			l, _ := os.Readlink(filepath.Join(dir, strconv.Itoa(fd)))
			targets = append(targets, strconv.Itoa(fd)+" -> "+l)
		}
		t.Fatalf("%s process %d has fds %v, want only 0, 1, 2", what, pid, targets)
	}
}
