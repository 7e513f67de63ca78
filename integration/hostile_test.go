//go:build linux

package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Workloads nobody reviewed, and faults at the worst moment.

// TestNullIOIsDevNull: a container started with no stdio (ctr --null-io,
// Go clients, CRI sandboxes) writes into /dev/null, not into a file in its
// bundle, which on a node is host memory (tmpfs) and grows unseen.
func TestNullIOIsDevNull(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("nullio")
		if _, err := d.Ctr(t, "run", "-d", "--null-io", "--runtime", d.Runtime, imageRef, id,
			"sh", "-c", "while :; do echo chatty chatty chatty chatty; done"); err != nil {
			t.Fatal(err)
		}
		pid := d.WaitStatus(t, id, "RUNNING").Pid
		for fd := 0; fd <= 2; fd++ {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
			if err != nil {
				t.Fatal(err)
			}
			if link != "/dev/null" {
				t.Errorf("fd %d of a --null-io container is %s, want /dev/null", fd, link)
			}
		}
		d.KillAndRemove(t, id)
	})
}

// TestFileLogSharedAndRotated: the init and an exec log to the same
// file://; no line of either is lost or overwritten, and a logrotate
// copytruncate while both write leaves a file that starts with a line,
// not with NUL bytes.
func TestFileLogSharedAndRotated(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("filelog")
		log := filepath.Join(t.TempDir(), "shared.log")
		uri := "file://" + log
		writer := func(name string, n int) string {
			return fmt.Sprintf("i=0; while [ $i -lt %d ]; do i=$((i+1)); echo %s-$i; sleep 0.005; done", n, name)
		}
		if _, err := d.Ctr(t, "run", "-d", "--log-uri", uri, "--runtime", d.Runtime, imageRef, id,
			"sh", "-c", writer("init", 400)+"; sleep 1000"); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, id, "RUNNING")
		if _, err := d.Ctr(t, "task", "exec", "-d", "--exec-id", "e1", "--log-uri", uri, id, "sh", "-c", writer("exec", 400)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		// logrotate's copytruncate: copy, then truncate in place.
		before, err := os.ReadFile(log)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(log, 0); err != nil {
			t.Fatal(err)
		}
		// Both writers finish (400 lines at 5 ms or more each).
		waitFor(t, "both writers' last lines (lost or overwritten?)", 30*time.Second, func() bool {
			data, _ := os.ReadFile(log)
			return bytes.Contains(data, []byte("init-400\n")) && bytes.Contains(data, []byte("exec-400\n"))
		})
		after, err := os.ReadFile(log)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.IndexByte(after, 0); i >= 0 {
			t.Fatalf("the log holds NUL bytes after copytruncate (first at %d of %d)", i, len(after))
		}
		line := regexp.MustCompile(`^(init|exec)-(\d+)$`)
		seen := map[string]bool{}
		for _, l := range strings.Split(strings.TrimSuffix(string(before)+string(after), "\n"), "\n") {
			m := line.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("a line was cut or overwritten: %q", l)
			}
			seen[l] = true
		}
		for _, name := range []string{"init", "exec"} {
			for i := 1; i <= 400; i++ {
				// Lines written between the copy and the truncation are
				// lost to any copytruncate; a few at most.
				if !seen[name+"-"+strconv.Itoa(i)] && !lostInRotation(before, name, i) {
					t.Errorf("line %s-%d is missing", name, i)
				}
			}
		}
		d.KillAndRemove(t, id)
	})
}

// lostInRotation tells whether line i of name was written in the instant
// between the copy and the truncation: the copy has its predecessor.
func lostInRotation(copied []byte, name string, i int) bool {
	for j := i - 1; j >= i-5 && j > 0; j-- {
		if bytes.Contains(copied, []byte(fmt.Sprintf("%s-%d\n", name, j))) {
			return !bytes.Contains(copied, []byte(fmt.Sprintf("%s-%d\n", name, j+1)))
		}
	}
	return false
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
	}
}

// TestSameIDReused: the same ID run and removed 50 times in a row, as a
// restart policy or `ctr run --rm` in a loop do. A stopping shim must not
// remove the socket of the next one for the same group: every run
// succeeds and no shim is left.
func TestSameIDReused(t *testing.T) {
	forEachVersionParallel(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("reused")
		for i := 0; i < 50; i++ {
			if out, err := d.ctrQuiet(time.Minute, "run", "--rm", "--runtime", d.Runtime, imageRef, id, "true"); err != nil {
				t.Fatalf("run %d of %s: %v\n%s", i+1, id, err, out)
			}
		}
		waitFor(t, "no shim left for "+id, 10*time.Second, func() bool { return len(d.ShimPids(id)) == 0 })
	})
}

// TestOOMLoopWhileContainerdAway: a container whose children the OOM
// killer kills in a loop while containerd is down makes a flood of OOM
// events; the shim's queue, its spool in the bundle and its memory stay
// bounded, and the container's exit still arrives once containerd is back.
func TestOOMLoopWhileContainerdAway(t *testing.T) {
	forEachVersionParallel(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("oomloop")
		w := d.WatchEvents(t)
		// 48 MiB buffers under a 32 MiB limit: each dd is OOM-killed.
		script := `end=$(( $(date +%s) + 14 )); while [ $(date +%s) -lt $end ]; do dd if=/dev/zero of=/dev/null bs=48M count=1 2>/dev/null; done; exit 3`
		if _, err := d.Ctr(t, "run", "-d", "--memory-limit", strconv.Itoa(32<<20), "--runtime", d.Runtime, imageRef, id, "sh", "-c", script); err != nil {
			t.Fatal(err)
		}
		pid := d.WaitStatus(t, id, "RUNNING").Pid
		shim := d.ShimOf(t, id, pid)
		if !w.WaitUntil(10*time.Second, func(e Event) bool { return e.Topic == "/tasks/oom" && e.str("container_id") == id }) {
			t.Fatal("no /tasks/oom: the loop does not reach the OOM killer")
		}
		rss0 := rssKB(t, shim)
		spool := filepath.Join(d.BundleDir(id), "keel-events")
		var mu sync.Mutex
		maxSpool, maxRSS := 0, 0
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for {
				ents, _ := os.ReadDir(spool)
				rss := rssKB(t, shim)
				mu.Lock()
				maxSpool, maxRSS = max(maxSpool, len(ents)), max(maxRSS, rss)
				mu.Unlock()
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
		d.Restart(t, true, 20*time.Second) // the loop ends (exit 3) while containerd is away
		close(stop)
		<-sampled
		t.Logf("while containerd was away: at most %d spooled events, shim RSS %d kB at most (%d kB before)", maxSpool, maxRSS, rss0)
		if maxSpool > 4 {
			t.Errorf("%d events spooled in the bundle; OOMs should coalesce (at most one pending per container)", maxSpool)
		}
		if maxRSS > rss0+8<<10 {
			t.Errorf("shim RSS grew from %d kB to %d kB while the OOM events could not be delivered", rss0, maxRSS)
		}
		d.WaitStatus(t, id, "STOPPED")
		if got := d.TaskRm(t, id); got != 3 {
			t.Errorf("exit status %d after containerd came back, want 3", got)
		}
	})
}

// rssKB is a process's resident set, in kB.
func rssKB(t testing.TB, pid int) int {
	m, err := procKB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS")
	if err != nil {
		return 0
	}
	return int(m["VmRSS"])
}

// TestExitOrderWithExecs: a container killed while execs run, one of them
// gone but with a grandchild still holding its stdout: every exec's exit
// is published before the container's.
func TestExitOrderWithExecs(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		w := d.WatchEvents(t)
		id := d.NewID("exitorder")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, id, "RUNNING")
		for exec, cmd := range map[string]string{"lingers": "sleep 1000 & exit 3", "runs": "exec sleep 1000"} {
			if _, err := d.Ctr(t, "task", "exec", "-d", "--exec-id", exec, id, "sh", "-c", cmd); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(300 * time.Millisecond)
		if _, err := d.Ctr(t, "task", "kill", "-s", "SIGKILL", id); err != nil {
			t.Fatal(err)
		}
		if !w.WaitUntil(20*time.Second, func(e Event) bool { return e.Topic == "/tasks/exit" && e.str("id") == id }) {
			t.Fatal("no /tasks/exit for the container")
		}
		var order []string
		for _, e := range w.Events() {
			if e.Topic == "/tasks/exit" && e.str("container_id") == id {
				order = append(order, e.str("id"))
			}
		}
		if len(order) != 3 || order[2] != id || !contains(order, "lingers") || !contains(order, "runs") {
			t.Errorf("exit order %v, want both execs, then %s", order, id)
		}
		d.TaskRm(t, id)
	})
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
