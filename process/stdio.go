//go:build linux

package process

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"

	"github.com/keel-shim/keel/process/reaper"
	"github.com/keel-shim/keel/runtime"
)

// Stdio is what containerd asked for: FIFO paths, or for output a
// file:// or binary:// URI; empty for none.
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// IOConfig is what stdio needs to know beyond the URIs.
type IOConfig struct {
	ContainerID, Namespace string // for a binary:// logger's environment
	UID, GID               int    // owner of the pipes (IoUid/IoGid), -1 to keep
	Reaper                 *reaper.Reaper
}

// IO owns the pipes between a container process and its stdio targets and
// the goroutines that copy between them. Each fd has exactly one owner:
// the child ends go to the runtime and are closed once it has passed them
// on; the parent ends belong to the copiers (or the logging binary).
type IO struct {
	child runtime.Stdio // ends handed to the process; closed after start

	stdinW     *os.File      // our end of the process's stdin
	stdinR     io.ReadCloser // the stdin FIFO
	stdinClose sync.Once

	outputs sync.WaitGroup // stdout and stderr copiers
	closers []io.Closer    // everything to close at the end
	logger  *logger        // a binary:// logging process, if any
}

// NewIO sets up stdio for a process. The ends in Child must be passed to
// the runtime, then released with CloseChild.
func NewIO(ctx context.Context, s Stdio, cfg IOConfig) (_ *IO, err error) {
	if s.Terminal {
		return nil, fmt.Errorf("terminal stdio: %w", errdefs.ErrNotImplemented)
	}
	p := &IO{}
	defer func() {
		if err != nil {
			p.CloseChild()
			p.Close()
		}
	}()
	if s.Stdin != "" {
		if err := p.openStdin(ctx, s.Stdin, cfg); err != nil {
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
		if !filepath.IsAbs(u.Path) {
			return target{}, fmt.Errorf("stdio %q: file:// needs an absolute path: %w", s, errdefs.ErrInvalidArgument)
		}
		return target{kind: targetFile, path: filepath.Clean(u.Path)}, nil
	case "binary", "binary-v2":
		if !filepath.IsAbs(u.Path) {
			return target{}, fmt.Errorf("stdio %q: %s:// needs an absolute path: %w", s, u.Scheme, errdefs.ErrInvalidArgument)
		}
		return target{kind: targetBinary, path: u.Path, url: *u}, nil
	}
	return target{}, fmt.Errorf("stdio %q: unsupported scheme %q: %w", s, u.Scheme, errdefs.ErrInvalidArgument)
}

func (p *IO) openStdin(ctx context.Context, path string, cfg IOConfig) error {
	t, err := parseTarget(path)
	if err != nil {
		return err
	}
	if t.kind != targetFIFO {
		return fmt.Errorf("stdin %q: only a FIFO can be stdin: %w", path, errdefs.ErrInvalidArgument)
	}
	// Non-blocking open: containerd may connect its writer later. Reads
	// wait for it, and see EOF once it closes.
	in, err := fifo.OpenFifo(ctx, t.path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open stdin %s: %w", path, err)
	}
	r, w, err := newPipe(cfg)
	if err != nil {
		in.Close()
		return err
	}
	p.stdinR, p.stdinW, p.child.Stdin = in, w, r
	go p.copyStdin()
	return nil
}

// output opens t and starts copying a new pipe into it. It returns the
// pipe's write end for the process, or nil for no output.
func (p *IO) output(t target, cfg IOConfig) (*os.File, error) {
	var dst *os.File
	var err error
	switch t.kind {
	case targetNone:
		return nil, nil
	case targetFIFO:
		// Read-write, so that the open never blocks and a reader that goes
		// away (containerd restarting) does not turn writes into EPIPE.
		dst, err = os.OpenFile(t.path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	case targetFile:
		dst, err = openLogFile(t.path)
	}
	if err != nil {
		return nil, fmt.Errorf("open stdio %s: %w", t.path, err)
	}
	r, w, err := newPipe(cfg)
	if err != nil {
		dst.Close()
		return nil, err
	}
	p.closers = append(p.closers, dst, r)
	p.outputs.Add(1)
	go func() {
		defer p.outputs.Done()
		// Closing our end once the output ends is what gives the reader
		// (ctr, CRI) its EOF.
		defer dst.Close()
		_, _ = copyStream(dst, r)
	}()
	return w, nil
}

// openLogFile opens a file:// target for appending, creating its parent
// directories. It is opened without O_APPEND, positioned at the end,
// because splice(2) refuses O_APPEND files; the shim is its only writer.
func openLogFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|syscall.O_CLOEXEC, 0o640)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// newPipe makes a pipe owned by the configured IO user, so that a
// container running as that user can use its stdio.
func newPipe(cfg IOConfig) (r, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	if cfg.UID > 0 || cfg.GID > 0 {
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
	// The writer went away: the process sees EOF, as with upstream.
	p.CloseStdin()
}

// Child returns the ends to hand to the runtime.
func (p *IO) Child() runtime.Stdio { return p.child }

// CloseChild closes the process's ends in the shim, once the runtime has
// passed them on, so that EOF reaches the copiers when the process exits.
func (p *IO) CloseChild() {
	for _, f := range []*os.File{p.child.Stdin, p.child.Stdout, p.child.Stderr} {
		if f != nil {
			f.Close()
		}
	}
	p.child = runtime.Stdio{}
}

// CloseStdin closes the process's stdin (CloseIO); it then reads EOF.
func (p *IO) CloseStdin() {
	if p.stdinW != nil {
		p.stdinClose.Do(func() { p.stdinW.Close() })
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
	p.CloseStdin()
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
