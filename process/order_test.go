//go:build linux

package process

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/keel-shim/keel/process/fakeruntime"
	"github.com/keel-shim/keel/process/reaper"
	"github.com/keel-shim/keel/process/stdio"
	"github.com/keel-shim/keel/runtime"
)

// The ordering invariants, on a fake runtime whose faults the tests pick:
// what the Observer hears, and in which order, is what containerd is told.

// recorder is an Observer that writes down what it hears.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func name(p *Process) string {
	if p.IsInit() {
		return "init"
	}
	return p.ExecID
}

func (r *recorder) Created(c *Container, st Status) { r.add("create") }
func (r *recorder) Started(c *Container, p *Process, st Status) {
	r.add("start:%s", name(p))
}
func (r *recorder) Transitioned(c *Container, op Op)            { r.add("%s", op) }
func (r *recorder) Checkpointed(c *Container, imagePath string) { r.add("checkpoint") }
func (r *recorder) Exited(c *Container, p *Process, st Status) {
	r.add("exit:%s:%d", name(p), st.ExitStatus)
}
func (r *recorder) OOM(c *Container) { r.add("oom") }

func (r *recorder) seen() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.events, " ")
}

// harness is one container on the fake runtime.
type harness struct {
	t   *testing.T
	r   *reaper.Reaper // the test binary's: the fake's processes are its
	rt  fakeruntime.Runtime
	obs *recorder
	dir string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	r, err := reaper.New()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rt, err := fakeruntime.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, r: r, rt: rt, obs: &recorder{}, dir: dir}
}

// create makes container id; shared is a container without a pid namespace
// of its own, whose leftovers the shim kills when its init exits.
func (h *harness) create(id string, shared bool) (*Container, error) {
	h.t.Helper()
	bundle, err := fakeruntime.Bundle(h.dir, id, shared)
	if err != nil {
		h.t.Fatal(err)
	}
	spec, err := LoadSpec(bundle)
	if err != nil {
		h.t.Fatal(err)
	}
	rt := runtime.New(runtime.Config{Binary: h.rt.Binary, Root: h.rt.Root, LogDir: bundle, Timeout: time.Second}, h.r)
	c, err := Create(context.Background(), Config{ID: id, Bundle: bundle, Namespace: "test", Spec: spec},
		Deps{Runtime: rt, Reaper: h.r, Observer: h.obs})
	if err == nil {
		h.t.Cleanup(func() { c.Init().Kill(context.Background(), syscall.SIGKILL, true) })
	}
	return c, err
}

func (h *harness) mustCreate(id string, shared bool) *Container {
	h.t.Helper()
	c, err := h.create(id, shared)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// wait waits, within a bound, for p's exit to be reported.
func (h *harness) wait(p *Process) Status {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := p.Wait(ctx)
	if err != nil {
		h.t.Fatalf("%s: no exit reported within 10 s (seen: %s)", name(p), h.obs.seen())
	}
	return st
}

func (h *harness) want(events string) {
	h.t.Helper()
	if got := h.obs.seen(); got != events {
		h.t.Errorf("observed %q, want %q", got, events)
	}
}

func mustStart(t *testing.T, p *Process) {
	t.Helper()
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestExitBeforePidFileRead: an init that is gone before the runtime's
// create returns, let alone before its pid file is read, is still
// reported, after its creation.
func TestExitBeforePidFileRead(t *testing.T) {
	h := newHarness(t)
	if err := h.rt.InitCommand("exit 3"); err != nil {
		t.Fatal(err)
	}
	if err := h.rt.Post("create", "sleep 0.2"); err != nil { // it has surely exited
		t.Fatal(err)
	}
	c := h.mustCreate("c1", false)
	if st := h.wait(c.Init()); st.ExitStatus != 3 || st.State != Stopped {
		t.Errorf("init status %+v, want stopped with 3", st)
	}
	h.want("create exit:init:3")
	if err := c.Init().Start(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Start after the exit: %v, want FailedPrecondition", err)
	}
}

// TestKilledDuringCreate: the init killed while the runtime's create is
// still running is reported created, then exited, never the other way.
func TestKilledDuringCreate(t *testing.T) {
	h := newHarness(t)
	if err := h.rt.Post("create", `kill -9 "$(cat "$root/init")"; sleep 0.2`); err != nil {
		t.Fatal(err)
	}
	c := h.mustCreate("c1", false)
	h.wait(c.Init())
	h.want("create exit:init:137")
}

// TestExecOutlivesInit: the init's exit is reported after the exits of the
// execs it leaves behind, which the shim kills (shared pid namespace).
func TestExecOutlivesInit(t *testing.T) {
	h := newHarness(t)
	c := h.mustCreate("c1", true)
	mustStart(t, c.Init())
	e, err := c.AddExec("e1", []byte(`{"args":["sleep"]}`), stdio.Request{})
	if err != nil {
		t.Fatal(err)
	}
	mustStart(t, e)
	if err := c.Init().Kill(context.Background(), syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	h.wait(c.Init())
	h.want("create start:init start:e1 exit:e1:137 exit:init:137")
}

// TestExecAfterInitExited: an exec cannot start once the init has exited.
func TestExecAfterInitExited(t *testing.T) {
	h := newHarness(t)
	c := h.mustCreate("c1", false)
	mustStart(t, c.Init())
	e, err := c.AddExec("e1", []byte(`{"args":["sleep"]}`), stdio.Request{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Init().Kill(context.Background(), syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	h.wait(c.Init())
	if err := e.Start(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("exec Start after the init exited: %v, want FailedPrecondition", err)
	}
	if _, err := c.AddExec("e2", []byte(`{}`), stdio.Request{}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("AddExec after the init exited: %v, want FailedPrecondition", err)
	}
	h.want("create start:init exit:init:137")
}

// TestPausedAroundExit: pause, resume and exit are heard in the order they
// happened, and a stopped container cannot be resumed.
func TestPausedAroundExit(t *testing.T) {
	h := newHarness(t)
	c := h.mustCreate("c1", false)
	mustStart(t, c.Init())
	ctx := context.Background()
	for _, step := range []func(context.Context) error{c.Init().Pause, c.Init().Resume, c.Init().Pause} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Init().Kill(ctx, syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	h.wait(c.Init())
	if err := c.Init().Resume(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Resume after the exit: %v, want FailedPrecondition", err)
	}
	h.want("create start:init pause resume pause exit:init:137")
}

// TestWedgedRuntime: a runtime that never returns fails the call within
// its deadline, and cannot withhold the init's exit: the kill of the
// leftovers after the init exits is bounded too.
func TestWedgedRuntime(t *testing.T) {
	h := newHarness(t)
	c := h.mustCreate("c1", true)
	mustStart(t, c.Init())
	if err := h.rt.Hook("kill", "exec sleep 1000"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := c.Init().Kill(context.Background(), syscall.SIGTERM, false)
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("Kill on a wedged runtime: %v after %s, want an error within the 1 s deadline", err, time.Since(start))
	}
	// The init ends by itself; the wedged kill of what it leaves must not
	// keep its exit from being reported.
	syscall.Kill(h.rt.InitPid(), syscall.SIGKILL)
	if st := h.wait(c.Init()); st.ExitStatus != 137 {
		t.Errorf("init status %+v, want 137", st)
	}
	h.want("create start:init exit:init:137")
}

// TestKillAfterReapNeverHitsARecycledPid: an exec that has been reaped
// stays Running while its output drains (a grandchild holds the pipe); a
// Kill then must not reach whatever process has been given its pid since.
func TestKillAfterReapNeverHitsARecycledPid(t *testing.T) {
	h := newHarness(t)
	// The exec leaves a grandchild holding its stdout, then exits.
	if err := h.rt.ExecCommand("sleep 1000 & exit 0"); err != nil {
		t.Fatal(err)
	}
	c := h.mustCreate("c1", false)
	mustStart(t, c.Init())
	log := "file://" + filepath.Join(h.dir, "e1.log")
	e, err := c.AddExec("e1", []byte(`{"args":["sh"]}`), stdio.Request{Stdout: log, Stderr: log})
	if err != nil {
		t.Fatal(err)
	}
	mustStart(t, e)
	pid := e.Status().Pid
	// Wait until it has been reaped: its pid is free, its state Running.
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the exec never exited")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := e.Status(); st.State != Running {
		t.Skipf("the exec's output drained already (state %s): nothing to test", st.State)
	}
	victim, victimExit := recyclePid(t, h.r, pid)
	defer victim.Process.Kill()
	err = e.Kill(context.Background(), syscall.SIGKILL, false)
	if !errdefs.IsNotFound(err) {
		t.Errorf("Kill of the reaped exec: %v, want NotFound", err)
	}
	select {
	case ex := <-victimExit:
		t.Fatalf("Kill of a reaped exec killed the process that was given its pid since (status %d)", ex.Status)
	case <-time.After(200 * time.Millisecond):
	}
}

// recyclePid starts a process that gets pid, which must be free: the
// kernel hands out the pid after ns_last_pid next. Needs root.
func recyclePid(t *testing.T, r *reaper.Reaper, pid int) (*exec.Cmd, <-chan reaper.Exit) {
	t.Helper()
	for try := 0; try < 20; try++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skipf("cannot choose the next pid (needs root): %v", err)
		}
		cmd := exec.Command("sleep", "1000")
		// Started through the reaper, the only waiter in this binary.
		exit, err := r.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			return cmd, exit
		}
		cmd.Process.Kill()
	}
	t.Skipf("pid %d was taken by another process each time", pid)
	return nil, nil
}
