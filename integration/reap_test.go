//go:build linux

package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestNoZombies checks that the shim reaps orphans that exit.
//
// The container shares the test's pid namespace on purpose: in a pid
// namespace of its own, orphans go to the container's pid 1 (here busybox
// `sleep`, which sh execs) and stay zombies whatever the shim does. Sharing
// the host's, they go to the nearest child subreaper, which is the shim, and
// only the shim can reap them.
func TestNoZombies(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("reap")
		pidns := fmt.Sprintf("pid:/proc/%d/ns/pid", os.Getpid())
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, "--with-ns", pidns, imageRef, id,
			"sh", "-c", "(sleep 1 &); (sleep 1 &); exec sleep 1000"); err != nil {
			t.Fatal(err)
		}
		task := d.WaitStatus(t, id, "RUNNING")
		shim := d.ShimOf(t, id, task.Pid)

		// The subshells exit at once, so their `sleep 1` are orphans: they
		// must now be children of the shim.
		var orphans []int
		deadline := time.Now().Add(900 * time.Millisecond)
		for len(orphans) < 2 && time.Now().Before(deadline) {
			orphans = nil
			for _, pid := range descendants(shim) {
				st, err := readStat(pid)
				if err == nil && st.Ppid == shim && strings.Join(cmdline(pid), " ") == "sleep 1" {
					orphans = append(orphans, pid)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(orphans) != 2 {
			t.Fatalf("found %d orphaned `sleep 1` under shim %d, want 2: is the shim a child subreaper?", len(orphans), shim)
		}

		// Once they exit, nothing below the shim may be left a zombie.
		deadline = time.Now().Add(10 * time.Second)
		for {
			var zombies []string
			for _, pid := range append(descendants(shim), orphans...) {
				if st, err := readStat(pid); err == nil && st.State == 'Z' {
					zombies = append(zombies, fmt.Sprintf("%d(%s, parent %d)", pid, st.Comm, st.Ppid))
				}
			}
			gone := true
			for _, pid := range orphans {
				if _, err := readStat(pid); err == nil {
					gone = false
				}
			}
			if gone && len(zombies) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("10s after the orphans' exit: zombies %v, orphans %v not all reaped by shim %d", zombies, orphans, shim)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if st := d.Tasks(t)[id].Status; st != "RUNNING" {
			t.Fatalf("container status %q after its orphans exited, want RUNNING", st)
		}
	})
}
