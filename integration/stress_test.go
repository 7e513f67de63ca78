//go:build linux

package integration

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The stress tests are long: they run with KEEL_STRESS=1 (make test-stress,
// which CI runs), and on containerd 2.4 only unless KEEL_TEST_VERSIONS says
// otherwise.
func stressVersions(t *testing.T, fn func(t *testing.T, d *Daemon)) {
	if os.Getenv("KEEL_STRESS") == "" {
		t.Skip("a stress test: set KEEL_STRESS=1 (make test-stress)")
	}
	versions := []string{"2.4"}
	if v := os.Getenv("KEEL_TEST_VERSIONS"); v != "" {
		versions = strings.Split(v, ",")
	}
	for _, v := range versions {
		t.Run(v, func(t *testing.T) { fn(t, StartContainerd(t, v)) })
	}
}

// shimUsage is what a leak would grow: open fds, goroutines (the shim logs
// their count on SIGUSR1) and resident anonymous memory (the binary's
// pages, mapped as code paths are first run, are not a leak).
type shimUsage struct{ fds, goroutines, rssKB, heapKB int }

func (u shimUsage) String() string {
	return fmt.Sprintf("%d fds, %d goroutines, %d kB anonymous RSS, %d kB live heap", u.fds, u.goroutines, u.rssKB, u.heapKB)
}

var goroutineLine = regexp.MustCompile(`msg=goroutines .*count=(\d+) heap_alloc=(\d+)`)

func (d *Daemon) shimUsage(t testing.TB, shim int) shimUsage {
	t.Helper()
	// containerd's connections to the shim come and go: the least of a
	// few samples is the shim's own count.
	u := shimUsage{fds: -1}
	for i := 0; i < 10; i++ {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", shim))
		if err != nil {
			t.Fatal(err)
		}
		if u.fds < 0 || len(fds) < u.fds {
			u.fds = len(fds)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// SIGUSR1: the shim collects garbage, frees memory and logs its
	// goroutines; RSS is read after that, so it counts live memory only.
	before := len(goroutineLine.FindAllStringSubmatch(d.log(t), -1))
	if err := syscall.Kill(shim, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := goroutineLine.FindAllStringSubmatch(d.log(t), -1); len(m) > before {
			u.goroutines, _ = strconv.Atoi(m[len(m)-1][1])
			heap, _ := strconv.Atoi(m[len(m)-1][2])
			u.heapKB = heap / 1024
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if u.goroutines == 0 {
		t.Fatalf("shim %d logged no goroutine count after SIGUSR1", shim)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", shim))
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "RssAnon:" {
			u.rssKB, _ = strconv.Atoi(f[1])
		}
	}
	return u
}

func (d *Daemon) log(t testing.TB) string {
	data, err := os.ReadFile(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestStressExecCycles runs 1000 exec processes in one container: the
// shim's fds and goroutines must come back to where they were, its RSS
// stay flat, and no zombie or exec state be left.
func TestStressExecCycles(t *testing.T) {
	stressVersions(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("execs")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "100000"); err != nil {
			t.Fatal(err)
		}
		task := d.WaitStatus(t, id, "RUNNING")
		shim := d.ShimOf(t, id, task.Pid)
		// A few cycles first, so that pools and lazily made state count
		// as the baseline rather than as a leak.
		for i := 0; i < 20; i++ {
			d.execTrue(t, id, fmt.Sprintf("warm%d", i))
		}
		before := d.shimUsage(t, shim)
		start := time.Now()
		for i := 0; i < 1000; i++ {
			d.execTrue(t, id, fmt.Sprintf("e%d", i))
		}
		after := d.shimUsage(t, shim)
		t.Logf("1000 exec cycles in %s: before %v; after %v", time.Since(start).Round(time.Second), before, after)
		// A leak per exec would show as hundreds of fds; the least of
		// several samples filters containerd's connections coming and
		// going (25 before and after in CI runs), so a slack of 3 is enough.
		if after.fds > before.fds+3 || after.goroutines > before.goroutines {
			t.Fatalf("leak after 1000 execs: before %v, after %v", before, after)
		}
		// Live heap, after a GC, is what a leak grows; RSS also holds
		// memory the Go runtime keeps for reuse, so it is only logged.
		if after.heapKB > before.heapKB+512 {
			t.Fatalf("live heap grew by %d kB over 1000 execs: before %v, after %v", after.heapKB-before.heapKB, before, after)
		}
		for _, pid := range descendants(shim) {
			if st, err := readStat(pid); err == nil && st.State == 'Z' {
				t.Fatalf("zombie %d below the shim", pid)
			}
		}
	})
}

func (d *Daemon) execTrue(t *testing.T, id, execID string) {
	t.Helper()
	if out, err := d.ctrQuiet(30*time.Second, "task", "exec", "--exec-id", execID, id, "true"); err != nil {
		t.Fatalf("exec %s: %v %s", execID, err, out)
	}
}

// TestStressConcurrentContainers starts 50 containers at once: all run,
// and all report their own exit status.
func TestStressConcurrentContainers(t *testing.T) {
	stressVersions(t, func(t *testing.T, d *Daemon) {
		const n = 50
		ids := make([]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range ids {
			ids[i] = d.NewID(fmt.Sprintf("many%d", i))
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				_, errs[i] = d.ctrQuiet(120*time.Second, "run", "-d", "--runtime", d.Runtime, imageRef, ids[i],
					"sh", "-c", fmt.Sprintf("sleep 2; exit %d", i%100))
			}(i)
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("container %d: %v", i, err)
			}
		}
		for i, id := range ids {
			d.WaitStatus(t, id, "STOPPED")
			if status := d.TaskRm(t, id); status != i%100 {
				t.Fatalf("container %d reports exit %d, want %d", i, status, i%100)
			}
		}
	})
}
