//go:build linux

// Package stdio wires a container process's stdin, stdout and stderr to
// what containerd asked for: FIFOs, file:// logs, binary:// loggers or a
// terminal. It owns every fd between the process and those targets, and
// the copies between them where one is needed (a pooled buffer for files,
// splice for FIFOs behind a pipe of the shim's, an optional bounded buffer
// while nobody reads); an output FIFO the process can write itself it gets
// with no copy at all.
package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"

	"github.com/keel-shim/keel/process/reaper"
	"github.com/keel-shim/keel/runtime"
)

// Request is what containerd asked for: FIFO paths, or for output a
// file:// or binary:// URI; empty for none.
type Request struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// Config is what stdio needs to know beyond the URIs.
type Config struct {
	ContainerID, Namespace string // for a binary:// logger's environment
	UID, GID               int    // owner of the pipes (IoUid/IoGid), -1 to keep
	Buffer                 OutputBuffer
	Reaper                 *reaper.Reaper
	Log                    *slog.Logger // for output dropped under DropOldest
}

// IO owns the pipes between a container process and its stdio targets and
// the goroutines that copy between them. Each fd has exactly one owner:
// the child ends go to the runtime and are closed once it has passed them
// on; the parent ends belong to the copiers (or the logging binary).
type IO struct {
	child runtime.Stdio // ends handed to the process; closed after start

	stdinW     *os.File      // our end of the process's stdin
	stdinR     io.ReadCloser // the stdin FIFO
	stdinKeep  io.Closer     // a writer of our own on the FIFO, until CloseIO
	stdinClose sync.Once

	outputs sync.WaitGroup // stdout and stderr copiers
	cfg     Config
	closers []io.Closer // everything to close at the end
	logger  *logger     // a binary:// logging process, if any

	// A terminal: the runtime sends the pty master to console, and the
	// shim copies between it, the stdin FIFO and ttyOut.
	console *runtime.ConsoleSocket
	ttyOut  *os.File
	pty     *os.File
}

// ownsPipes reports whether the process's pipes get an owner of their own
// (IoUid/IoGid), and so whether it needs pipes of the shim's at all.
func (c Config) ownsPipes() bool { return c.UID > 0 || c.GID > 0 }

// NewIO sets up stdio for a process. Pass Child and ConsoleSocket to the
// runtime, then call Started.
func New(ctx context.Context, s Request, cfg Config) (_ *IO, err error) {
	p := &IO{cfg: cfg}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if s.Stdin != "" {
		if err := p.openStdin(ctx, s.Stdin, cfg, !s.Terminal); err != nil {
			return nil, err
		}
	}
	out, err := parseTarget(s.Stdout)
	if err != nil {
		return nil, err
	}
	errt, err := parseTarget(s.Stderr)
	if err != nil {
		return nil, err
	}
	if s.Terminal {
		// One pty carries everything; stderr has nowhere else to go.
		if out.kind == targetBinary {
			return nil, fmt.Errorf("a terminal with a binary:// logger: %w", errdefs.ErrNotImplemented)
		}
		if p.ttyOut, err = openTarget(out); err != nil {
			return nil, err
		}
		p.console, err = runtime.NewConsoleSocket()
		return p, err
	}
	if out.kind == targetBinary || errt.kind == targetBinary {
		// A logging binary takes both streams, as containerd sends it.
		if out != errt {
			return nil, fmt.Errorf("binary logger %q needs the same URI for stdout and stderr: %w", s.Stdout, errdefs.ErrInvalidArgument)
		}
		err = p.startLogger(ctx, out.url, cfg)
		return p, err
	}
	if p.child.Stdout, err = p.output(out, cfg); err != nil {
		return nil, err
	}
	if errt == out && out.kind != targetNone {
		p.child.Stderr = p.child.Stdout // one target, one pipe: lines stay whole
	} else if p.child.Stderr, err = p.output(errt, cfg); err != nil {
		return nil, err
	}
	return p, nil
}

type targetKind int

const (
	targetNone targetKind = iota
	targetFIFO
	targetFile
	targetBinary
)

type target struct {
	kind targetKind
	path string
	url  url.URL
}

// parseTarget is the one place stdio URIs are interpreted. A plain path
// is a FIFO, as containerd passes FIFOs.
func parseTarget(s string) (target, error) {
	if s == "" {
		return target{}, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return target{}, fmt.Errorf("stdio %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "", "fifo":
		return target{kind: targetFIFO, path: u.Path}, nil
	case "file":
		if u.Host != "" || !filepath.IsAbs(u.Path) {
			return target{}, fmt.Errorf("stdio %q: file:// needs an absolute path: %w", s, errdefs.ErrInvalidArgument)
		}
		return target{kind: targetFile, path: filepath.Clean(u.Path)}, nil
	case "binary", "binary-v2":
		if u.Host != "" || !filepath.IsAbs(u.Path) {
			return target{}, fmt.Errorf("stdio %q: %s:// needs an absolute path: %w", s, u.Scheme, errdefs.ErrInvalidArgument)
		}
		return target{kind: targetBinary, path: u.Path, url: *u}, nil
	}
	return target{}, fmt.Errorf("stdio %q: unsupported scheme %q: %w", s, u.Scheme, errdefs.ErrInvalidArgument)
}

// openStdin opens the stdin FIFO and, unless a terminal will carry it, a
// pipe that becomes the process's stdin.
func (p *IO) openStdin(ctx context.Context, path string, cfg Config, pipe bool) error {
	t, err := parseTarget(path)
	if err != nil {
		return err
	}
	if t.kind != targetFIFO {
		return fmt.Errorf("stdin %q: only a FIFO can be stdin: %w", path, errdefs.ErrInvalidArgument)
	}
	if err := requireFIFO(t.path); err != nil {
		return err
	}
	// Non-blocking open: containerd may connect its writer later. Reads
	// wait for it, and see EOF once it closes.
	in, err := fifo.OpenFifo(ctx, t.path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open stdin %s: %w", path, err)
	}
	p.stdinR = in
	// Hold a writer of our own, as containerd's shim does: a client that
	// detaches must not end the process's stdin; only CloseIO does, and
	// then whatever is still in the FIFO is copied before the EOF.
	keep, err := fifo.OpenFifo(ctx, t.path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open stdin %s for writing: %w", path, err)
	}
	p.stdinKeep = keep
	if !pipe {
		return nil
	}
	r, w, err := newPipe(cfg)
	if err != nil {
		return err
	}
	p.stdinW, p.child.Stdin = w, r
	go p.copyStdin()
	return nil
}

// output returns the fd the process writes t through, or nil for no
// output. A FIFO is handed to the process itself where nothing needs the
// shim in between (directFIFO); anything else gets a new pipe and a
// copier from it into t.
func (p *IO) output(t target, cfg Config) (*os.File, error) {
	if t.kind == targetFIFO && cfg.Buffer.Size <= 0 && !cfg.ownsPipes() {
		return p.directFIFO(t.path)
	}
	dst, err := openTarget(t)
	if dst == nil || err != nil {
		return nil, err
	}
	r, w, err := newPipe(cfg)
	if err != nil {
		dst.Close()
		return nil, err
	}
	p.closers = append(p.closers, r)
	p.copyOut(dst, r)
	return w, nil
}

// openTarget opens an output FIFO or file; nil for none.
func openTarget(t target) (dst *os.File, err error) {
	switch t.kind {
	case targetNone:
		return nil, nil
	case targetFIFO:
		if err := requireFIFO(t.path); err != nil {
			return nil, err
		}
		// Read-write, so that the open never blocks and a reader that goes
		// away (containerd restarting) does not turn writes into EPIPE.
		dst, err = os.OpenFile(t.path, os.O_RDWR|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
	case targetFile:
		dst, err = openLogFile(t.path)
	default:
		return nil, fmt.Errorf("stdio %s: not an output target: %w", t.path, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, fmt.Errorf("open stdio %s: %w", t.path, err)
	}
	return dst, nil
}

// directFIFO opens the output FIFO at path for the process to write into
// itself: its bytes then go to containerd's reader with no copy, no
// wake-up and no CPU of the shim's. It is what a copy with no
// OutputBuffer amounts to anyway: while nobody reads, the process blocks
// once the FIFO is full (64 KiB sooner, without the pipe in between); the
// reader sees EOF once every writer, the process and whatever inherited
// its stdout, has closed; and all the process wrote is in the FIFO when
// its exit is reported. Not with IoUid/IoGid: a process that re-opens
// /proc/self/fd/1 then needs a pipe it owns, not containerd's FIFO.
//
// The shim keeps a reader of its own, which it never reads, so that
// writes block rather than fail with EPIPE while containerd is away
// (restarting); dropping it (Close, at Delete) is what ends the writes of
// a grandchild that outlived its exec, as closing the copy did.
func (p *IO) directFIFO(path string) (*os.File, error) {
	if err := requireFIFO(path); err != nil {
		return nil, err
	}
	keep, err := openFIFO(path, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, keep)
	// Blocking, as the process's stdout must be; with our reader there,
	// the open returns at once.
	return openFIFO(path, unix.O_WRONLY)
}

// openFIFO opens path, which must be a FIFO itself (checked on the open
// fd, so that a path swapped since requireFIFO is refused too), and
// returns it in blocking mode, whatever flags opened it: the shim never
// reads or writes these fds, and os.NewFile would put a non-blocking one
// in Go's poller, which then wakes the shim for every write the process
// makes (measured: 3.8 s of shim CPU per GiB of 4 KiB writes).
func openFIFO(path string, flags int) (*os.File, error) {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("open stdio %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		unix.Close(fd)
		return nil, fmt.Errorf("stdio %s is not a FIFO: %w", path, errdefs.ErrInvalidArgument)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stdio %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// copyOut copies src into dst until src ends, then closes dst: that close
// is what gives the reader (ctr, CRI) its EOF. Into a FIFO, with an
// OutputBuffer configured, the copy goes through a bounded queue, so that
// the process keeps running while nobody reads.
func (p *IO) copyOut(dst, src *os.File) {
	p.closers = append(p.closers, dst)
	p.outputs.Add(1)
	if p.cfg.Buffer.Size <= 0 || isRegular(dst) {
		go func() {
			defer p.outputs.Done()
			defer dst.Close()
			if _, err := copyStream(dst, src); err != nil && !errors.Is(err, os.ErrClosed) && p.cfg.Log != nil {
				p.cfg.Log.Warn("copy output", "id", p.cfg.ContainerID, "to", dst.Name(), "error", err)
			}
		}()
		return
	}
	q := newOutputQueue(p.cfg.Buffer)
	p.closers = append(p.closers, q)
	go func() {
		defer p.outputs.Done()
		defer dst.Close()
		_ = bufferedCopy(dst, src, q, func(n int64) {
			if p.cfg.Log != nil {
				p.cfg.Log.Warn("output dropped while nobody read it", "id", p.cfg.ContainerID, "fifo", dst.Name(), "bytes", n, "buffer", p.cfg.Buffer.Size)
			}
		})
	}()
}

// requireFIFO refuses a stdio path that is not a FIFO (itself, not
// through a symlink): a request must not make the shim open a device or a
// regular file read-write.
func requireFIFO(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("stdio fifo %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if fi.Mode()&os.ModeNamedPipe == 0 {
		return fmt.Errorf("stdio %s is not a FIFO (%s): %w", path, fi.Mode().Type(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// openLogFile opens a file:// target for appending, creating its parent
// directories. O_APPEND, as containerd opens it: the init and each exec
// have their own fd on the same file, and a logrotate copytruncate must
// not leave the next write past a hole.
func openLogFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_CLOEXEC, 0o640)
}

// newPipe makes a pipe owned by the configured IO user, so that a
// container running as that user can use its stdio.
func newPipe(cfg Config) (r, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	if cfg.ownsPipes() {
		for _, f := range []*os.File{r, w} {
			if err = f.Chown(cfg.UID, cfg.GID); err != nil {
				r.Close()
				w.Close()
				return nil, nil, fmt.Errorf("chown stdio pipe to %d:%d: %w", cfg.UID, cfg.GID, err)
			}
		}
	}
	return r, w, nil
}

func (p *IO) copyStdin() {
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	// Close may race this write: closing an *os.File under a blocked
	// Write is safe and ends it.
	_, _ = io.CopyBuffer(onlyWriter{p.stdinW}, p.stdinR, *buf)
	// Every writer, ours included (CloseIO), is gone and the FIFO is
	// drained: now the process reads EOF.
	p.stdinW.Close()
}

// Child returns the ends to hand to the runtime.
func (p *IO) Child() runtime.Stdio { return p.child }

// ConsoleSocket is the --console-socket for a terminal process, or "".
func (p *IO) ConsoleSocket() string {
	if p.console == nil {
		return ""
	}
	return p.console.Path()
}

// consoleTimeout bounds the wait for the pty of a runtime that has already
// returned from create or exec: the fd is queued by then.
const consoleTimeout = 5 * time.Second

// Started is called once the runtime has started the process: the shim
// closes its copies of the process's ends, so that EOF reaches the copiers
// when the process exits, and for a terminal takes the pty and starts
// copying through it.
func (p *IO) Started() error {
	p.closeChild()
	if p.console == nil {
		return nil
	}
	pty, err := p.console.Receive(consoleTimeout)
	p.console.Close()
	p.console = nil
	if err != nil {
		return err
	}
	p.pty = pty
	p.closers = append(p.closers, pty)
	if p.stdinR != nil {
		go func() {
			buf := bufPool.Get().(*[]byte)
			defer bufPool.Put(buf)
			_, _ = io.CopyBuffer(onlyWriter{pty}, p.stdinR, *buf)
			// As containerd's shim does: when stdin ends, the terminal
			// is hung up.
			pty.Close()
		}()
	}
	if p.ttyOut != nil {
		p.copyOut(p.ttyOut, pty)
	}
	return nil
}

// Resize sets the terminal's size; without a terminal it does nothing, as
// with containerd's shim (clients resize on every SIGWINCH).
func (p *IO) Resize(width, height uint32) error {
	if p.pty == nil {
		return nil
	}
	return runtime.Resize(p.pty, uint16(width), uint16(height))
}

func (p *IO) closeChild() {
	for _, f := range []*os.File{p.child.Stdin, p.child.Stdout, p.child.Stderr} {
		if f != nil {
			f.Close()
		}
	}
	p.child = runtime.Stdio{}
}

// CloseStdin is CloseIO: it drops the shim's own writer of the stdin
// FIFO, so that once the client's writers are gone too and what they
// wrote has been copied, the process reads EOF.
func (p *IO) CloseStdin() {
	if p.stdinKeep != nil {
		p.stdinClose.Do(func() { p.stdinKeep.Close() })
	}
}

// Drain waits until the output of the process has been copied, or timeout.
// Output a lingering grandchild still writes keeps flowing afterwards.
func (p *IO) Drain(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { p.outputs.Wait(); close(done) }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
		return true
	case <-timer.C:
		return false
	}
}

// Close releases everything; copiers still running end with errors, and a
// logging binary is asked to finish.
func (p *IO) Close() {
	p.closeChild()
	if p.console != nil {
		p.console.Close()
	}
	if p.ttyOut != nil && p.pty == nil {
		p.ttyOut.Close() // never handed to a copier
	}
	p.CloseStdin()
	if p.stdinW != nil {
		p.stdinW.Close()
	}
	if p.stdinR != nil {
		p.stdinR.Close()
	}
	for _, c := range p.closers {
		c.Close()
	}
	if p.logger != nil {
		p.logger.stop()
	}
}
