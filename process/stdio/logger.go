//go:build linux

package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/keel-shim/keel/process/reaper"
)

const (
	// loggerReadyTimeout bounds the wait for a logging binary to say it
	// is ready, so a wedged one fails Create instead of hanging it.
	loggerReadyTimeout = 10 * time.Second
	// loggerStopGrace is how long a logging binary may take to finish
	// once the container's output has ended, before it is signalled.
	loggerStopGrace = 2 * time.Second
)

// logger is a binary:// logging process: it reads the container's stdout
// and stderr on its fds 3 and 4 and says it is ready on fd 5.
type logger struct {
	cmd   *exec.Cmd
	exit  <-chan reaper.Exit
	ready bool
}

// startLogger starts the logging binary of u and waits until it is ready:
// for binary:// when it closes fd 5, for binary-v2:// when it writes a
// byte there first. The container's ends of its pipes become the child's
// stdout and stderr; the shim copies nothing.
func (p *IO) startLogger(ctx context.Context, u url.URL, cfg Config) (err error) {
	if _, err := os.Stat(u.Path); err != nil {
		return fmt.Errorf("logging binary %s: %v: %w", u.Path, err, errdefs.ErrInvalidArgument)
	}
	outR, outW, err := newPipe(cfg)
	if err != nil {
		return err
	}
	p.child.Stdout = outW
	errR, errW, err := newPipe(cfg)
	if err != nil {
		outR.Close()
		return err
	}
	p.child.Stderr = errW
	readyR, readyW, err := os.Pipe()
	if err != nil {
		outR.Close()
		errR.Close()
		return err
	}
	defer readyR.Close()

	cmd := exec.Command(u.Path, loggerArgs(u.Query())...)
	// Only what containerd's shim gives a logger: the shim's environment
	// (TTRPC_ADDRESS, NOTIFY_SOCKET, ...) is none of its business.
	cmd.Env = []string{"CONTAINER_ID=" + cfg.ContainerID, "CONTAINER_NAMESPACE=" + cfg.Namespace}
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	exit, err := cfg.Reaper.Start(cmd)
	// The logger has its copies now; ours would keep its reads from
	// ever seeing EOF.
	outR.Close()
	errR.Close()
	readyW.Close()
	if err != nil {
		return fmt.Errorf("start logging binary %s: %v: %w", u.Path, err, errdefs.ErrInvalidArgument)
	}
	p.logger = &logger{cmd: cmd, exit: exit}

	deadline := time.Now().Add(loggerReadyTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = readyR.SetReadDeadline(deadline)
	var b [1]byte
	n, rerr := readyR.Read(b[:])
	switch {
	case errors.Is(rerr, os.ErrDeadlineExceeded):
		return fmt.Errorf("logging binary %s did not signal ready in time: %w", u.Path, errdefs.ErrUnavailable)
	case rerr != nil && rerr != io.EOF:
		return fmt.Errorf("logging binary %s: read ready pipe: %w", u.Path, rerr)
	case u.Scheme == "binary-v2" && n == 0:
		return fmt.Errorf("logging binary %s closed its ready pipe without signalling ready (it crashed or exited early): %w", u.Path, errdefs.ErrFailedPrecondition)
	case n == 0 && p.logger.exitsSoon():
		// binary:// signals readiness by closing fd 5, which is also what
		// an exit does: tell them apart by whether it is still running.
		return fmt.Errorf("logging binary %s exited before the container started: %w", u.Path, errdefs.ErrFailedPrecondition)
	}
	p.logger.ready = true
	return nil
}

// exitGrace is how long a binary:// logger that closed its ready pipe is
// watched for an exit: a process's fds close before it becomes a zombie,
// so an exit right after EOF needs a moment to show.
const exitGrace = 50 * time.Millisecond

// exitsSoon tells whether the logger exits within exitGrace. The exit it
// consumes is put back for stop.
func (l *logger) exitsSoon() bool {
	timer := time.NewTimer(exitGrace)
	defer timer.Stop()
	select {
	case e := <-l.exit:
		ch := make(chan reaper.Exit, 1)
		ch <- e
		l.exit = ch
		return true
	case <-timer.C:
		return false
	}
}

// loggerArgs turns the URI's query into arguments, sorted so the command
// line is stable: ?k=v&flag gives "k v flag".
func loggerArgs(q url.Values) []string {
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var args []string
	for _, k := range keys {
		args = append(args, k)
		if v := q.Get(k); v != "" {
			args = append(args, v)
		}
	}
	return args
}

// stop ends the logger, within a bound, before the container is gone:
// one that never became ready is killed at once; a ready one first gets
// loggerStopGrace to finish on its own (its input has ended), then
// SIGTERM, then SIGKILL. Nothing outlives the shim's Delete.
func (l *logger) stop() {
	signals := []syscall.Signal{0, syscall.SIGTERM, syscall.SIGKILL}
	if !l.ready {
		signals = []syscall.Signal{syscall.SIGKILL}
	}
	for _, sig := range signals {
		if sig != 0 {
			_ = l.cmd.Process.Signal(sig)
		}
		timer := time.NewTimer(loggerStopGrace)
		select {
		case <-l.exit:
			timer.Stop()
			reaper.Release(l.cmd) // the status is the reaper's
			return
		case <-timer.C:
		}
	}
}
