//go:build linux

package process

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"

	"github.com/keel-shim/keel/runtime"
)

// Stdio is what containerd asked for: paths (FIFOs) or URIs, empty for none.
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// IO owns the pipes between a container process and its stdio targets and
// the goroutines that copy between them. Each fd has exactly one owner:
// the child ends go to the runtime and are closed once it has passed them
// on; the parent ends belong to the copiers.
type IO struct {
	child runtime.Stdio // ends handed to the process; closed after start

	stdinW     *os.File      // our end of the process's stdin
	stdinR     io.ReadCloser // the stdin FIFO
	stdinClose sync.Once

	outputs sync.WaitGroup // stdout and stderr copiers
	closers []io.Closer    // everything to close at the end
}

// bufPool holds copy buffers, so that idle processes hold none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// NewIO sets up stdio for a process. The ends in Child must be passed to
// the runtime, then released with CloseChild.
func NewIO(ctx context.Context, s Stdio) (_ *IO, err error) {
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
		if err := checkFIFOPath(s.Stdin); err != nil {
			return nil, err
		}
		// Non-blocking open: containerd may connect its writer later.
		in, err := fifo.OpenFifo(ctx, s.Stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %s: %w", s.Stdin, err)
		}
		r, w, err := os.Pipe()
		if err != nil {
			in.Close()
			return nil, err
		}
		p.stdinR, p.stdinW, p.child.Stdin = in, w, r
		go p.copyStdin()
	}
	if p.child.Stdout, err = p.output(s.Stdout); err != nil {
		return nil, err
	}
	if s.Stderr == s.Stdout && s.Stdout != "" {
		// One FIFO for both streams (as ctr does for some modes): one pipe.
		p.child.Stderr = p.child.Stdout
	} else if p.child.Stderr, err = p.output(s.Stderr); err != nil {
		return nil, err
	}
	return p, nil
}

// checkFIFOPath accepts a plain path or a fifo:// URI naming an existing
// FIFO; other schemes are not stdio Keel knows.
func checkFIFOPath(p string) error {
	u, err := url.Parse(p)
	if err == nil && u.Scheme != "" && u.Scheme != "fifo" {
		return fmt.Errorf("stdio %q: unsupported scheme %q: %w", p, u.Scheme, errdefs.ErrInvalidArgument)
	}
	return nil
}

// output opens the FIFO at path and starts copying a new pipe into it. It
// returns the pipe's write end for the process, or nil for no output.
func (p *IO) output(path string) (*os.File, error) {
	if path == "" {
		return nil, nil
	}
	if err := checkFIFOPath(path); err != nil {
		return nil, err
	}
	// Read-write so that the open never blocks and a reader that goes away
	// (containerd restarting) does not turn writes into EPIPE: a new reader
	// picks up from where the old one left.
	dst, err := os.OpenFile(trimScheme(path), os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open stdio fifo: %w", err)
	}
	r, w, err := os.Pipe()
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
		buf := bufPool.Get().(*[]byte)
		defer bufPool.Put(buf)
		_, _ = io.CopyBuffer(dst, onlyReader{r}, *buf)
	}()
	return w, nil
}

// onlyReader hides a file's WriteTo so io.CopyBuffer uses the pooled buffer.
type onlyReader struct{ io.Reader }

func trimScheme(p string) string {
	if u, err := url.Parse(p); err == nil && u.Scheme == "fifo" {
		return u.Path
	}
	return p
}

func (p *IO) copyStdin() {
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	// Close may race this write: closing an *os.File under a blocked
	// Write is safe and ends it.
	_, _ = io.CopyBuffer(p.stdinW, p.stdinR, *buf)
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
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Close releases everything; copiers still running end with errors.
func (p *IO) Close() {
	p.CloseStdin()
	if p.stdinR != nil {
		p.stdinR.Close()
	}
	for _, c := range p.closers {
		c.Close()
	}
}
