//go:build linux

package reaper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Every test shares one Reaper: each New installs its own SIGCHLD handler
// and Wait4(-1) loop, and two loops in one process would steal each other's
// exits. The test binary becomes a child subreaper, as the shim does.
var (
	shared     *Reaper
	sharedErr  error
	sharedOnce sync.Once
)

func testReaper(t *testing.T) *Reaper {
	t.Helper()
	sharedOnce.Do(func() { shared, sharedErr = New() })
	if sharedErr != nil {
		t.Fatalf("New: %v", sharedErr)
	}
	return shared
}

// bound is the generous limit for anything that should happen "at once";
// it only turns a hang into a failure, it does not time the reaper.
const bound = 10 * time.Second

// waitFor polls cond until it holds or bound passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gone tells whether pid has been reaped: a zombie keeps its /proc entry
// until its parent waits for it.
func gone(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return errors.Is(err, os.ErrNotExist)
}

// child is one entry of /proc whose parent is the test process.
type child struct {
	pid   int
	comm  string
	state byte
}

// children lists the test process's children from /proc/*/stat.
func children(t *testing.T) []child {
	t.Helper()
	self := os.Getpid()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var out []child
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // exited (and reaped) while we looked
		}
		// "pid (comm) state ppid ...": comm may hold spaces or ')'.
		s := string(data)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		fields := strings.Fields(s[end+1:])
		if len(fields) < 2 {
			continue
		}
		ppid, err := strconv.Atoi(fields[1])
		if err != nil || ppid != self {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(s[:open]))
		out = append(out, child{pid: pid, comm: s[open+1 : end], state: fields[0][0]})
	}
	return out
}

func zombies(t *testing.T) []child {
	var z []child
	for _, c := range children(t) {
		if c.state == 'Z' {
			z = append(z, c)
		}
	}
	return z
}

// locked runs f with the reaper's lock held, so it sees the maps as the
// loop leaves them after a complete reap-and-deliver step.
func locked(r *Reaper, f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f()
}

func TestExitStatus(t *testing.T) {
	// The kernel encodes a normal exit as code<<8 and a death by signal as
	// the signal number (plus 0x80 if it dumped core).
	tests := []struct {
		name string
		ws   unix.WaitStatus
		want int
	}{
		{"exit 0", 0 << 8, 0},
		{"exit 1", 1 << 8, 1},
		{"exit 3", 3 << 8, 3},
		{"exit 255", 255 << 8, 255},
		{"SIGHUP", unix.WaitStatus(unix.SIGHUP), 128 + 1},
		{"SIGKILL", unix.WaitStatus(unix.SIGKILL), 137},
		{"SIGTERM", unix.WaitStatus(unix.SIGTERM), 143},
		{"SIGSEGV with core", unix.WaitStatus(unix.SIGSEGV) | 0x80, 128 + 11},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ExitStatus(tt.ws); got != tt.want {
				t.Errorf("ExitStatus(%#x) = %d, want %d", uint32(tt.ws), got, tt.want)
			}
		})
	}
}

func TestRunExitStatus(t *testing.T) {
	r := testReaper(t)
	tests := []struct {
		name   string
		script string
		want   int
	}{
		{"success", "exit 0", 0},
		{"exit code", "exit 3", 3},
		{"high exit code", "exit 200", 200},
		{"SIGKILL", "kill -9 $$", 137},
		{"SIGTERM", "kill -TERM $$", 143},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, err := r.Run(context.Background(), exec.Command("sh", "-c", tt.script))
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if status != tt.want {
				t.Errorf("status = %d, want %d", status, tt.want)
			}
		})
	}
	// Every Run consumed its registration.
	locked(r, func() {
		if len(r.waiters) != 0 {
			t.Errorf("waiters left after Run: %v", r.waiters)
		}
	})
}

func TestRunStartFailure(t *testing.T) {
	r := testReaper(t)
	status, err := r.Run(context.Background(), exec.Command("/nonexistent/keel-test-binary"))
	if err == nil {
		t.Fatal("Run of a missing binary succeeded")
	}
	if status != -1 {
		t.Errorf("status = %d, want -1", status)
	}
	locked(r, func() {
		if len(r.waiters) != 0 {
			t.Errorf("a failed start left a waiter: %v", r.waiters)
		}
	})
}

func TestRunContextEnds(t *testing.T) {
	r := testReaper(t)
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		}, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			cmd := exec.Command("sleep", "100")

			type result struct {
				status int
				err    error
			}
			done := make(chan result, 1)
			go func() {
				status, err := r.Run(ctx, cmd)
				done <- result{status, err}
			}()
			var res result
			select {
			case res = <-done:
			case <-time.After(bound):
				t.Fatalf("Run did not return within %s of its context ending", bound)
			}
			if !errors.Is(res.err, tt.want) {
				t.Errorf("err = %v, want %v", res.err, tt.want)
			}
			// The child was killed, not left running: SIGKILL, and reaped.
			if res.status != 137 {
				t.Errorf("status = %d, want 137 (SIGKILL)", res.status)
			}
			if pid := cmd.Process.Pid; !gone(pid) {
				t.Errorf("pid %d still exists after Run returned", pid)
			}
		})
	}
}

func TestRunConcurrent(t *testing.T) {
	// Many children exiting together coalesce SIGCHLDs; each Run must
	// still get its own status.
	r := testReaper(t)
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, err := r.Run(context.Background(), exec.Command("sh", "-c", fmt.Sprintf("exit %d", i)))
			if err != nil || status != i {
				errs <- fmt.Errorf("child %d: status %d, err %v", i, status, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestWatchEarlyExit is the case Watch exists for: the process exits and
// is reaped before the shim learns its pid (the runtime writes the pid file
// later), and Started must still report it.
func TestWatchEarlyExit(t *testing.T) {
	r := testReaper(t)
	w := r.Watch()
	defer w.Close()

	// Started without the reaper's knowledge, as the runtime starts a
	// container's init.
	cmd := exec.Command("sh", "-c", "exit 7")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	waitFor(t, fmt.Sprintf("pid %d to be reaped", pid), func() bool { return gone(pid) })
	_ = cmd.Wait() // the reaper has the status; this only releases the pidfd

	ch := w.Started(pid)
	select {
	case e := <-ch:
		if e.Pid != pid || e.Status != 7 {
			t.Errorf("exit = %+v, want pid %d status 7", e, pid)
		}
		if e.Time.IsZero() {
			t.Error("exit has no time")
		}
	default:
		t.Fatal("Started did not deliver an exit that happened before it")
	}
	locked(r, func() {
		if len(r.watches) != 0 || len(r.waiters) != 0 {
			t.Errorf("after Started: watches %d, waiters %v; want none", len(r.watches), r.waiters)
		}
	})
}

// TestWatchExitAfterStarted: the common order, the pid is known first.
func TestWatchExitAfterStarted(t *testing.T) {
	r := testReaper(t)
	w := r.Watch()
	defer w.Close()

	// The child exits only when its stdin reaches EOF, so it is certainly
	// alive when Started registers it.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	cmd := exec.Command("sh", "-c", "read x; exit 5")
	cmd.Stdin = pr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	pid := cmd.Process.Pid

	ch := w.Started(pid)
	select {
	case e := <-ch:
		t.Fatalf("exit %+v delivered before the process exited", e)
	default:
	}
	pw.Close()
	select {
	case e := <-ch:
		if e.Pid != pid || e.Status != 5 {
			t.Errorf("exit = %+v, want pid %d status 5", e, pid)
		}
	case <-time.After(bound):
		t.Fatalf("no exit within %s", bound)
	}
	_ = cmd.Wait()
}

// TestWatchIgnoresClaimedExits: an exit that has a registered waiter goes
// to that waiter only, not into an open watch as well.
func TestWatchIgnoresClaimedExits(t *testing.T) {
	r := testReaper(t)
	w := r.Watch()
	defer w.Close()

	cmd := exec.Command("sh", "-c", "exit 2")
	status, err := r.Run(context.Background(), cmd)
	if err != nil || status != 2 {
		t.Fatalf("Run = %d, %v; want 2, nil", status, err)
	}
	locked(r, func() {
		if e, ok := w.early[cmd.Process.Pid]; ok {
			t.Errorf("watch recorded a claimed exit: %+v", e)
		}
	})
}

func TestWatchClose(t *testing.T) {
	r := testReaper(t)
	w1, w2 := r.Watch(), r.Watch()
	locked(r, func() {
		if len(r.watches) != 2 {
			t.Fatalf("open watches = %d, want 2", len(r.watches))
		}
	})
	w1.Close()
	ch := w2.Started(os.Getpid()) // a pid that will not exit during the test
	locked(r, func() {
		if len(r.watches) != 0 {
			t.Errorf("open watches after Close and Started = %d, want 0", len(r.watches))
		}
	})
	// Close after Started and a second Close are documented as safe.
	w2.Close()
	w1.Close()
	select {
	case e := <-ch:
		t.Errorf("exit delivered for a live pid: %+v", e)
	default:
	}
	// The reaper is shared by the tests: drop the live pid's waiter.
	locked(r, func() { delete(r.waiters, os.Getpid()) })
}

// TestUnclaimedExitDropped: with no watch open, an exit nobody registered
// (an orphan) is reaped and forgotten; nothing accumulates.
func TestUnclaimedExitDropped(t *testing.T) {
	r := testReaper(t)
	w := r.Watch()
	w.Close()

	cmd := exec.Command("sh", "-c", "exit 9")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	waitFor(t, fmt.Sprintf("pid %d to be reaped", pid), func() bool { return gone(pid) })
	_ = cmd.Wait()
	locked(r, func() {
		if len(r.waiters) != 0 || len(r.watches) != 0 {
			t.Errorf("waiters %v, watches %d; want both empty", r.waiters, len(r.watches))
		}
		if w.early != nil {
			t.Errorf("closed watch still records exits: %v", w.early)
		}
	})
}

// TestOrphansReaped: grandchildren reparented to the subreaper are reaped
// too, leaving no zombies.
func TestOrphansReaped(t *testing.T) {
	r := testReaper(t)

	t.Run("sleep", func(t *testing.T) {
		status, err := r.Run(context.Background(), exec.Command("sh", "-c", "(sleep 0.2 &) ; exit 0"))
		if err != nil || status != 0 {
			t.Fatalf("Run = %d, %v", status, err)
		}
		waitFor(t, "the orphaned sleep to exit and be reaped", func() bool { return len(children(t)) == 0 })
	})

	t.Run("controlled", func(t *testing.T) {
		// The orphan lives until we close the pipe, so it is certainly
		// observed as our child before it exits.
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer pw.Close()
		cmd := exec.Command("sh", "-c", "cat <&3 >/dev/null & exit 0")
		cmd.ExtraFiles = []*os.File{pr}
		status, err := r.Run(context.Background(), cmd)
		pr.Close()
		if err != nil || status != 0 {
			t.Fatalf("Run = %d, %v", status, err)
		}
		var orphan child
		waitFor(t, "the orphaned cat to be reparented to the test process", func() bool {
			for _, c := range children(t) {
				if c.comm == "cat" {
					orphan = c
					return true
				}
			}
			return false
		})
		pw.Close()
		waitFor(t, fmt.Sprintf("orphan %d to be reaped", orphan.pid), func() bool { return gone(orphan.pid) })
	})

	if z := zombies(t); len(z) != 0 {
		t.Errorf("zombie children left: %+v", z)
	}
}

// TestRunReleasesFDs: a run leaves no fd behind, without waiting for a
// garbage collection (Go keeps a pidfd per started process, which a Wait
// that finds no child does not close).
func TestRunReleasesFDs(t *testing.T) {
	r := testReaper(t)
	count := func() int {
		fds, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(fds)
	}
	if _, err := r.Run(context.Background(), exec.Command("true")); err != nil {
		t.Fatal(err)
	}
	before := count()
	for i := 0; i < 50; i++ {
		if _, err := r.Run(context.Background(), exec.Command("true")); err != nil {
			t.Fatal(err)
		}
	}
	if after := count(); after > before+2 {
		t.Fatalf("%d fds after 50 runs, %d before", after, before)
	}
}
