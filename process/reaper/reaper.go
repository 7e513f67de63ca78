//go:build linux

// Package reaper makes the shim the child subreaper of everything it starts
// and is the only code that waits for children. Exits are handed to whoever
// registered interest in a pid, without ever blocking the reaping loop.
//
// Two ways to learn about an exit:
//   - Run/Start, for children the shim forks itself (the OCI runtime binary):
//     the pid is registered before the reaping loop can see it exit.
//   - Watch, for processes whose pid is only known later (a container's init
//     or exec process, whose pid the runtime writes to a pid file): the watch
//     records every unclaimed exit while it is open, so an exit that happens
//     before the pid is known is still delivered.
package reaper

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Exit is one reaped child.
type Exit struct {
	Pid    int
	Status int // exit code, or 128+signal for a killed process
	Time   time.Time
}

// Reaper reaps all children of the shim.
type Reaper struct {
	// mu is held while reaping and while a child is started and registered,
	// so the loop never reaps a child the shim has not registered yet.
	mu      sync.Mutex
	waiters map[int]chan Exit   // guarded by mu; one buffered slot each
	watches map[*Watch]struct{} // guarded by mu; open watches
	wake    chan os.Signal
}

// A process is a subreaper once, and SIGCHLD is the process's: it has one
// reaper, whoever asks for it (the shim's daemon once; tests often).
var process struct {
	once sync.Once
	r    *Reaper
	err  error
}

// New makes the calling process a child subreaper and starts reaping. Later
// calls return the same reaper: two would steal each other's children.
func New() (*Reaper, error) {
	process.once.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			process.err = fmt.Errorf("set child subreaper: %w", err)
			return
		}
		r := newReaper()
		signal.Notify(r.wake, unix.SIGCHLD)
		go r.loop()
		process.r = r
	})
	return process.r, process.err
}

func newReaper() *Reaper {
	return &Reaper{
		waiters: make(map[int]chan Exit),
		watches: make(map[*Watch]struct{}),
		// SIGCHLDs coalesce, so one slot is enough: each wake reaps all.
		wake: make(chan os.Signal, 1),
	}
}

func (r *Reaper) loop() {
	for range r.wake {
		r.reapAll()
	}
}

// reapAll collects every child that has exited, as tini does: signals
// coalesce, so one SIGCHLD may stand for many exits.
func (r *Reaper) reapAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if !ws.Exited() && !ws.Signaled() {
			// A ptrace stop, reported to the tracer whatever the flags:
			// core/mount traces the child it makes for an idmapped mount.
			continue
		}
		r.deliver(Exit{Pid: pid, Status: ExitStatus(ws), Time: time.Now()})
	}
}

// deliver hands e to its registered waiter, or to every open watch; an exit
// nobody asked for (an orphan reparented to the shim) is simply dropped.
// Called with mu held; never blocks.
func (r *Reaper) deliver(e Exit) {
	if ch, ok := r.waiters[e.Pid]; ok {
		delete(r.waiters, e.Pid)
		ch <- e
		return
	}
	for w := range r.watches {
		w.early[e.Pid] = e
	}
}

// ExitStatus converts a wait status to the shell convention.
func ExitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// Start starts cmd and returns a channel that receives its exit. The
// caller must not call cmd.Wait before the exit has been received: the
// reaper collects the status; then Release frees cmd's resources.
func (r *Reaper) Start(cmd *exec.Cmd) (<-chan Exit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan Exit, 1)
	r.waiters[cmd.Process.Pid] = ch
	return ch, nil
}

// Run starts cmd and waits for it to exit. If ctx ends first, the child is
// killed and still waited for, so no zombie or goroutine is left behind.
func (r *Reaper) Run(ctx context.Context, cmd *exec.Cmd) (int, error) {
	ch, err := r.Start(cmd)
	if err != nil {
		return -1, err
	}
	var e Exit
	select {
	case e = <-ch:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		e = <-ch
		err = ctx.Err()
	}
	Release(cmd)
	return e.Status, err
}

// Release frees what os/exec holds for a started cmd whose exit the
// reaper has delivered: Wait ends its copy goroutines (its "no child"
// error is expected), and Release closes the pidfd that Go keeps since
// 1.23, which a failed Wait leaves open until a garbage collection.
func Release(cmd *exec.Cmd) {
	_ = cmd.Wait()
	_ = cmd.Process.Release()
}

// Watch opens a window in which unclaimed exits are remembered, for a
// process whose pid is learned only after it may already have exited.
// Open it before starting the process; Close it when done.
func (r *Reaper) Watch() *Watch {
	w := &Watch{r: r, early: make(map[int]Exit)}
	r.mu.Lock()
	r.watches[w] = struct{}{}
	r.mu.Unlock()
	return w
}

// Watch is an open subscription for one process-to-be.
type Watch struct {
	r     *Reaper
	early map[int]Exit // guarded by r.mu; exits seen while open
}

// Started registers pid and closes the watch. The channel receives the exit,
// at once if the process exited before Started was called.
func (w *Watch) Started(pid int) <-chan Exit {
	ch, _ := w.started(pid, false)
	return ch
}

// StartedPidfd is Started that also returns a pidfd of the process, to
// signal it by: the pid alone may name another process once this one has
// been reaped. The pidfd is nil if the process has already exited or the
// kernel has no pidfd_open. The caller closes it.
func (w *Watch) StartedPidfd(pid int) (<-chan Exit, *os.File) {
	return w.started(pid, true)
}

func (w *Watch) started(pid int, withPidfd bool) (<-chan Exit, *os.File) {
	ch := make(chan Exit, 1)
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	delete(w.r.watches, w)
	var pidfd *os.File
	if e, ok := w.early[pid]; ok {
		ch <- e
	} else {
		w.r.waiters[pid] = ch
		// Not reaped yet, and nobody but this reaper (whose lock is held)
		// reaps the shim's children: pid is still the process.
		if withPidfd {
			if fd, err := unix.PidfdOpen(pid, 0); err == nil {
				pidfd = os.NewFile(uintptr(fd), "pidfd")
			}
		}
	}
	w.early = nil
	return ch, pidfd
}

// Close abandons the watch (the process failed to start). Safe after Started.
func (w *Watch) Close() {
	w.r.mu.Lock()
	delete(w.r.watches, w)
	w.early = nil
	w.r.mu.Unlock()
}
