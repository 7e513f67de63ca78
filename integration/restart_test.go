//go:build linux

package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// TestContainerdRestart restarts containerd under running workloads, as a
// chaos test does: first a clean stop, then SIGKILL with a container that
// exits while containerd is away. After each restart the workload started
// before it still runs with the same pid, and exec, ps, pause, resume and
// metrics work on it; kill and delete work afterwards; a container paused
// before a restart is still paused after it; and the exit that happened in
// the dark is reported with its status (containerd 2.x deletes, on reload,
// the task of a shim that lists no pids: Keel must not let that happen).
func TestContainerdRestart(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		run := d.NewID("survivor")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, run, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		before := d.WaitStatus(t, run, "RUNNING")
		// Paused across the clean restart, then killed and deleted.
		paused := d.NewID("paused")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, paused, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		pausedTask := d.WaitStatus(t, paused, "RUNNING")
		if _, err := d.Ctr(t, "task", "pause", paused); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, paused, "PAUSED")

		d.Restart(t, false, 500*time.Millisecond)
		d.checkSurvivor(t, run, before.Pid, "clean")
		if got := d.WaitStatus(t, paused, "PAUSED"); got.Pid != pausedTask.Pid {
			t.Fatalf("after a clean restart the paused task's pid is %d, was %d", got.Pid, pausedTask.Pid)
		}
		if _, err := d.Ctr(t, "task", "resume", paused); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, paused, "RUNNING")
		d.KillAndRemove(t, paused)
		if _, err := d.Ctr(t, "containers", "rm", paused); err != nil {
			t.Fatal(err)
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
		d.checkSurvivor(t, run, before.Pid, "kill")
		d.KillAndRemove(t, run)
		for _, id := range []string{dark, run} {
			if _, err := d.Ctr(t, "containers", "rm", id); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// checkSurvivor checks a container started before containerd restarted:
// same init pid, and exec, ps, pause, resume and metrics work.
func (d *Daemon) checkSurvivor(t *testing.T, id string, pid int, restart string) {
	t.Helper()
	if after := d.WaitStatus(t, id, "RUNNING"); after.Pid != pid {
		t.Fatalf("after the %s restart the task's pid is %d, was %d", restart, after.Pid, pid)
	}
	out, err := d.Ctr(t, "task", "exec", "--exec-id", "after-"+restart, id, "echo", "still here")
	if err != nil || out != "still here\n" {
		t.Fatalf("exec after the %s restart: %q, %v", restart, out, err)
	}
	d.CheckPsPauseResume(t, id, pid)
	d.checkMetrics(t, id)
}

// checkMetrics checks that `ctr task metrics` prints the container's cgroup
// figures, whatever the cgroup version: its "METRIC VALUE" table must count
// at least one pid and some memory in use.
func (d *Daemon) checkMetrics(t *testing.T, id string) {
	t.Helper()
	out, err := d.Ctr(t, "task", "metrics", id)
	if err != nil {
		t.Fatalf("task metrics %s: %v", id, err)
	}
	vals := map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				vals[f[0]] = v
			}
		}
	}
	var memory bool
	for k, v := range vals {
		memory = memory || (strings.HasPrefix(k, "memory.usage") && v > 0)
	}
	if vals["pids.current"] < 1 || !memory {
		t.Fatalf("task metrics %s: want pids.current >= 1 and a memory.usage figure > 0, got %v from:\n%s", id, vals, out)
	}
}

// seqLines is a writer for a container's stdout that collects the lines
// "seq N" as the numbers N, and anything else as bad lines.
type seqLines struct {
	mu      sync.Mutex
	partial []byte
	vals    []int
	bad     []string
}

func (s *seqLines) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(s.partial[:i])
		s.partial = s.partial[i+1:]
		if n, err := strconv.Atoi(strings.TrimPrefix(line, "seq ")); err == nil && strings.HasPrefix(line, "seq ") {
			s.vals = append(s.vals, n)
		} else {
			s.bad = append(s.bad, line)
		}
	}
}

func (s *seqLines) values() ([]int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.vals...), append([]string(nil), s.bad...)
}

// wait polls until at least n numbers were read, failing with what was
// read otherwise.
func (s *seqLines) wait(t *testing.T, what string, n int, stderr *syncBuffer) []int {
	t.Helper()
	ok := pollUntil(15*time.Second, func() bool { v, _ := s.values(); return len(v) >= n })
	v, bad := s.values()
	if !ok {
		t.Fatalf("%s: read %d sequence lines within 15s, want %d; values %v, other lines %q, stderr %q", what, len(v), n, v, bad, stderr.String())
	}
	return v
}

// TestFIFOReattachAfterRestart has the Go client start a container whose
// stdout and stderr are FIFOs in a temp dir, and read its output: a
// sequence number every 50ms. The client's IO then goes away (the FIFOs
// stay, as when a client dies), containerd is SIGKILLed and comes back two
// seconds later, and a new client re-attaches to the same FIFOs, which
// containerd learns from the shim: the output goes on, in order, with no
// line lost or repeated while the new reader is attached. The gap between
// the first client's last line and the re-attach is not checked: with no
// reader the shim, as upstream's, lets the FIFO fill and then blocks the
// container's writes.
func TestFIFOReattachAfterRestart(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		c, ctx := d.Client(t)
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		id := d.NewID("reattach")
		cont := newClientContainer(t, d, c, ctx, id, nil, 0, oci.WithProcessArgs("sh", "-c",
			"i=0; while :; do i=$((i+1)); echo seq $i; sleep 0.05; done"))

		fifoRoot := t.TempDir()
		set, err := cio.NewFIFOSetInDir(fifoRoot, id, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { set.Close() }) // removes the FIFOs' dir, whatever happened
		// The client's IO for the task has no closer of its own: closing
		// it closes the client's ends of the FIFOs, and leaves them.
		paths := cio.Config{Stdout: set.Stdout, Stderr: set.Stderr}
		var out1 seqLines
		var err1 syncBuffer
		task, err := cont.NewTask(ctx, func(string) (cio.IO, error) {
			return cio.NewAttach(cio.WithStreams(nil, &out1, &err1))(cio.NewFIFOSet(paths, nil))
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		pid := task.Pid()
		out1.wait(t, "first client", 5, &err1)
		task.IO().Close()
		task.IO().Wait()
		vals1, bad1 := out1.values()
		checkConsecutive(t, "first client", vals1, bad1)
		last := vals1[len(vals1)-1]
		t.Logf("first client read %v", vals1)
		for _, p := range []string{paths.Stdout, paths.Stderr} {
			if fi, err := os.Stat(p); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
				t.Fatalf("FIFO %s after the client closed its IO: %v, %v", p, fi, err)
			}
		}

		d.Restart(t, true, 2*time.Second)

		c2, ctx2 := d.Client(t)
		ctx2, cancel2 := context.WithTimeout(ctx2, 2*time.Minute)
		defer cancel2()
		cont2, err := c2.LoadContainer(ctx2, id)
		if err != nil {
			t.Fatal(err)
		}
		var out2 seqLines
		var err2 syncBuffer
		task2, err := cont2.Task(ctx2, cio.NewAttach(cio.WithStreams(nil, &out2, &err2)))
		if err != nil {
			t.Fatalf("re-attach after containerd's restart: %v", err)
		}
		if got := task2.IO().Config(); got.Stdout != paths.Stdout || got.Stderr != paths.Stderr {
			t.Fatalf("after the restart containerd gives the task's stdio as %+v, want the FIFOs it was created with, %+v", got, paths)
		}
		if st, err := task2.Status(ctx2); err != nil || st.Status != containerd.Running || task2.Pid() != pid {
			t.Fatalf("after the restart: status %+v, %v, pid %d; want running, pid %d", st, err, task2.Pid(), pid)
		}
		vals2 := out2.wait(t, "re-attached client", 5, &err2)
		if vals2[0] <= last {
			t.Fatalf("re-attached client starts at seq %d, but the first client already read seq %d: old output repeated (%v)", vals2[0], last, vals2)
		}
		// Lines beyond what the FIFO held at the re-attach: live output.
		want := vals2[len(vals2)-1] + 5
		if !pollUntil(15*time.Second, func() bool { v, _ := out2.values(); return v[len(v)-1] >= want }) {
			v, _ := out2.values()
			t.Fatalf("re-attached client stopped receiving: last seq %d, want %d (stderr %q)", v[len(v)-1], want, err2.String())
		}

		exitC, err := task2.Wait(ctx2)
		if err != nil {
			t.Fatal(err)
		}
		if err := task2.Kill(ctx2, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if code := waitExit(t, "container", exitC); code != 137 {
			t.Fatalf("exit status %d after SIGKILL, want 137", code)
		}
		// The client's Delete waits for the end of the output, then
		// closes its IO, which removes the FIFOs containerd named.
		if _, err := task2.Delete(ctx2); err != nil {
			t.Fatal(err)
		}
		vals2, bad2 := out2.values()
		checkConsecutive(t, "re-attached client", vals2, bad2)
		t.Logf("re-attached client read %d lines, seq %d to %d", len(vals2), vals2[0], vals2[len(vals2)-1])
		if err1.String() != "" || err2.String() != "" {
			t.Fatalf("stderr before the restart %q, after %q; want none", err1.String(), err2.String())
		}
		for _, p := range []string{paths.Stdout, paths.Stderr, filepath.Dir(paths.Stdout)} {
			if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s still exists after the task's deletion (%v)", p, err)
			}
		}
		if err := cont2.Delete(ctx2, containerd.WithSnapshotCleanup); err != nil {
			t.Fatal(err)
		}
	})
}

// TestExitsWhileContainerdAway: a container and an exec exit while
// containerd is down for longer than containerd's shim retries events
// (about 21 s). Once containerd is back, a subscriber that reconnected
// hears each TaskExit exactly once, with its status; the container shows
// STOPPED, and `ctr task rm` reports its status.
func TestExitsWhileContainerdAway(t *testing.T) {
	// 40 s per version, most of it waiting: the versions run at once.
	forEachVersionParallel(t, func(t *testing.T, d *Daemon) {
		// Both exit while containerd is down: 4 s leaves the setup below
		// time to see them run, even with two versions starting at once.
		gone := d.NewID("gone")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, gone, "sh", "-c", "sleep 4; exit 7"); err != nil {
			t.Fatal(err)
		}
		keeper := d.NewID("keeper")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, keeper, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, keeper, "RUNNING")
		if _, err := d.Ctr(t, "task", "exec", "-d", "--exec-id", "late", keeper, "sh", "-c", "sleep 4; exit 5"); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, gone, "RUNNING")

		// While containerd is away, the exits wait on disk in the bundles.
		spooled := make(chan string, 1)
		go func() {
			time.Sleep(10 * time.Second)
			var missing []string
			for _, id := range []string{gone, keeper} {
				if files, _ := filepath.Glob(filepath.Join(d.BundleDir(id), "keel-events", "*tasks_exit.pb")); len(files) == 0 {
					missing = append(missing, id)
				}
			}
			spooled <- strings.Join(missing, ", ")
		}()
		d.Restart(t, true, 25*time.Second)
		if m := <-spooled; m != "" {
			t.Errorf("no exit event spooled in the bundle of %s while containerd was down", m)
		}
		w := d.WatchEvents(t)
		isExit := func(container, id string) func(Event) bool {
			return func(e Event) bool {
				return e.Topic == "/tasks/exit" && e.str("container_id") == container && e.str("id") == id
			}
		}
		if e := w.WaitFor(t, "the container's exit", isExit(gone, gone)); e.num("exit_status") != 7 {
			t.Fatalf("the container's TaskExit has status %d, want 7:\n%s", e.num("exit_status"), w.dump())
		}
		if e := w.WaitFor(t, "the exec's exit", isExit(keeper, "late")); e.num("exit_status") != 5 {
			t.Fatalf("the exec's TaskExit has status %d, want 5:\n%s", e.num("exit_status"), w.dump())
		}
		// A resend comes within a forward timeout (5 s) plus the settle
		// delay (2 s) after the first send: count for longer than that.
		time.Sleep(10 * time.Second)
		for _, ex := range [][2]string{{gone, gone}, {keeper, "late"}} {
			n := 0
			for _, e := range w.Events() {
				if isExit(ex[0], ex[1])(e) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("%d TaskExit events for %s/%s, want exactly one:\n%s", n, ex[0], ex[1], w.dump())
			}
		}
		for _, id := range []string{gone, keeper} {
			if _, err := os.Stat(filepath.Join(d.BundleDir(id), "keel-events")); !os.IsNotExist(err) {
				t.Errorf("%s: the spool is still there after delivery (%v)", id, err)
			}
		}
		d.WaitStatus(t, gone, "STOPPED")
		if status := d.TaskRm(t, gone); status != 7 {
			t.Fatalf("task rm reports %d, want 7", status)
		}
		d.KillAndRemove(t, keeper)
	})
}
