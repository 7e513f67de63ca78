//go:build linux

// Package process runs a container's init and exec processes through the
// OCI runtime: their states, stdio, exits and the order those exits are
// reported in.
package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/keel-shim/keel/process/reaper"
	"github.com/keel-shim/keel/process/stdio"
	"github.com/keel-shim/keel/runtime"
)

// drainTimeout bounds how long an exit waits for the process's output to
// be copied: a grandchild that keeps the pipe open must not hold back the
// exit forever (its later output still flows).
const drainTimeout = 2 * time.Second

// Process is a container's init process (ExecID "") or one exec process.
type Process struct {
	c      *Container
	ExecID string
	Stdio  stdio.Request
	spec   []byte // the OCI process JSON of an exec process

	mu    sync.Mutex
	state State       // guarded by mu
	pid   int         // guarded by mu
	exit  reaper.Exit // guarded by mu; set once Stopped
	io    *stdio.IO   // guarded by mu
	pidfd *os.File    // guarded by mu; an exec's, until its exit is recorded
	// reaped: the exit is known (output may still drain): the pid is free.
	reaped bool // guarded by mu
	done   chan struct{}
}

// Status is a snapshot of a process.
type Status struct {
	State      State
	Pid        int
	ExitStatus int
	ExitedAt   time.Time
}

func newProcess(c *Container, execID string, req stdio.Request) *Process {
	return &Process{c: c, ExecID: execID, Stdio: req, done: make(chan struct{})}
}

// IsInit tells whether p is the container's init process.
func (p *Process) IsInit() bool { return p.ExecID == "" }

// Container is the container p belongs to.
func (p *Process) Container() *Container { return p.c }

// Status returns the current state of p.
func (p *Process) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.statusLocked()
}

func (p *Process) statusLocked() Status {
	return Status{State: p.state, Pid: p.pid, ExitStatus: p.exit.Status, ExitedAt: p.exit.Time}
}

// Wait blocks until p has exited and its exit was reported, or ctx ends.
func (p *Process) Wait(ctx context.Context) (Status, error) {
	select {
	case <-p.done:
		return p.Status(), nil
	case <-ctx.Done():
		return Status{}, ctx.Err()
	}
}

// Start starts a created process. Its Started event is reported before its
// exit can be, even if it exits at once.
func (p *Process) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	to, err := next(p.state, OpStart)
	if err != nil {
		return err
	}
	switch {
	case p.IsInit() && p.c.restoreFrom != "":
		err = p.c.restore(ctx)
	case p.IsInit():
		err = p.c.rt.Start(ctx, p.c.ID)
	default:
		err = p.startExec(ctx)
	}
	if err != nil {
		return err
	}
	p.state = to
	p.c.obs.Started(p.c, p, p.statusLocked())
	return nil
}

// startExec runs the exec process. Called with p.mu held.
func (p *Process) startExec(ctx context.Context) (err error) {
	if err := p.c.beginExec(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			p.c.execs.running.Done()
		}
	}()
	io, err := stdio.New(ctx, p.Stdio, p.c.ioCfg)
	if err != nil {
		return err
	}
	pidFile := p.c.tempPath("exec", ".pid")
	defer os.Remove(pidFile)
	l, err := p.c.launch(io, pidFile, func() error {
		return p.c.rt.Exec(ctx, p.c.ID, p.spec, runtime.ExecOpts{PidFile: pidFile, ConsoleSocket: io.ConsoleSocket(), Stdio: io.Child()})
	})
	if err != nil {
		io.Close()
		return err
	}
	p.io = io
	p.launched(l)
	go p.await(l.exits)
	return nil
}

// launched records the process the runtime made. Called with p.mu held.
func (p *Process) launched(l launched) {
	p.pid, p.pidfd = l.pid, l.pidfd
	p.reaped = len(l.exits) > 0 // it exited before its pid file was read
}

// await records the exit the reaper delivers, after the output is drained
// and, for the init, after all exec exits were reported.
func (p *Process) await(exits <-chan reaper.Exit) {
	e := <-exits
	p.mu.Lock()
	p.reaped = true
	p.mu.Unlock()
	if p.IsInit() {
		// Recorded at once, before anything can fail: if the shim dies
		// now, `delete` still reports how the container ended.
		p.c.logErr("record the init's exit in the bundle", SaveExit(p.c.Bundle, e))
		p.c.initExited()
	}
	p.mu.Lock()
	io := p.io
	p.mu.Unlock()
	if io != nil {
		io.Drain(drainTimeout)
	}
	if p.IsInit() {
		p.c.execs.running.Wait()
	}

	p.mu.Lock()
	to, _ := next(p.state, OpExit) // an exit is legal in every live state
	p.state, p.exit = to, e
	if p.pidfd != nil {
		p.pidfd.Close()
		p.pidfd = nil
	}
	if to == Stopped {
		p.c.obs.Exited(p.c, p, p.statusLocked())
	}
	close(p.done)
	p.mu.Unlock()

	if !p.IsInit() {
		p.c.execs.running.Done()
	}
}

// Kill signals the process; with all (init only) every process of the
// container.
func (p *Process) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := next(p.state, OpKill); err != nil {
		return err
	}
	if p.IsInit() {
		return p.c.rt.Kill(ctx, p.c.ID, sig, all)
	}
	if p.state == Created {
		return fmt.Errorf("exec %s is not started: %w", p.ExecID, errdefs.ErrFailedPrecondition)
	}
	// Through the pidfd where there is one: once reaped (its output may
	// still be draining) the pid may already be another process's.
	var err error
	switch {
	case p.pidfd != nil:
		err = unix.PidfdSendSignal(int(p.pidfd.Fd()), sig, nil, 0)
	case p.reaped:
		err = unix.ESRCH
	default: // a kernel without pidfd_open
		err = unix.Kill(p.pid, sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("kill exec %s: %w", p.ExecID, err)
	}
	return nil
}

// CloseStdin closes the process's stdin so that it reads EOF.
func (p *Process) CloseStdin() {
	p.mu.Lock()
	io := p.io
	p.mu.Unlock()
	if io != nil {
		io.CloseStdin()
	}
}

// Delete removes a process that is not running. For a created init the
// runtime kills it first; its status is the one the reaper then reports.
func (p *Process) Delete(ctx context.Context) (Status, error) {
	p.mu.Lock()
	to, err := next(p.state, OpDelete)
	if err != nil {
		p.mu.Unlock()
		return Status{}, err
	}
	wasCreated := p.state == Created
	if p.IsInit() {
		if err := p.c.deleteInit(ctx, wasCreated); err != nil {
			p.mu.Unlock()
			return Status{}, err
		}
	}
	if p.io != nil {
		p.io.Close()
	}
	// An exec that was never started, or an init still waiting to be
	// restored, never ran: no exit will close done.
	neverRan := wasCreated && (!p.IsInit() || p.pid == 0)
	if neverRan {
		close(p.done)
	}
	p.state = to
	p.mu.Unlock()
	if !p.IsInit() {
		p.c.removeExec(p.ExecID)
	}
	if wasCreated && !neverRan {
		// The forced delete killed it; report how it ended.
		timer := time.NewTimer(drainTimeout)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
		}
	}
	return p.Status(), nil
}

func readPid(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid file %s: %q", path, data)
	}
	return pid, nil
}

// Pause freezes the container (init only).
func (p *Process) Pause(ctx context.Context) error {
	return p.transition(ctx, OpPause, p.c.rt.Pause)
}

// Resume thaws the container (init only).
func (p *Process) Resume(ctx context.Context) error {
	return p.transition(ctx, OpResume, p.c.rt.Resume)
}

// transition applies op through the runtime call do, if the state allows.
func (p *Process) transition(ctx context.Context, op Op, do func(context.Context, string) error) error {
	if !p.IsInit() {
		return fmt.Errorf("%s applies to the container, not exec %s: %w", op, p.ExecID, errdefs.ErrInvalidArgument)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	to, err := next(p.state, op)
	if err != nil {
		return err
	}
	if err := do(ctx, p.c.ID); err != nil {
		return err
	}
	p.state = to
	p.c.obs.Transitioned(p.c, op)
	return nil
}

// ResizePty resizes the process's terminal, if it has one.
func (p *Process) ResizePty(width, height uint32) error {
	p.mu.Lock()
	io := p.io
	p.mu.Unlock()
	if io == nil {
		return nil
	}
	return io.Resize(width, height)
}
