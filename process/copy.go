//go:build linux

package process

import (
	"errors"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// spliceChunk is the most one splice call moves: a pipe holds 64 KiB by
// default, so this never limits a call in practice.
const spliceChunk = 1 << 20

// bufPool holds copy buffers for the paths splice cannot take, so that
// idle processes hold none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// fileBufPool holds the larger buffers of copies into files, which run
// only while output flows.
var fileBufPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

// copyStream copies src to dst until src ends. From a pipe into a pipe or
// FIFO it splices, so the bytes never enter user space; into a file, or
// where the kernel refuses splice (a terminal), it copies through a
// pooled buffer.
// Both files stay in Go's poller: no OS thread blocks per stream.
func copyStream(dst, src *os.File) (int64, error) {
	var n int64
	if !isRegular(dst) {
		// Into a file, write(2) from a buffer measured faster than
		// splice(2) with containers' small writes (make bench); into a
		// pipe or FIFO, splice costs less CPU.
		var err error
		n, err = splice(dst, src)
		if !errors.Is(err, errNoSplice) {
			return n, err
		}
	}
	pool := &bufPool
	if isRegular(dst) {
		pool = &fileBufPool
	}
	buf := pool.Get().(*[]byte)
	defer pool.Put(buf)
	m, err := io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *buf)
	return n + m, err
}

// onlyReader and onlyWriter hide *os.File's ReadFrom/WriteTo so that
// io.CopyBuffer really uses the pooled buffer.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

var errNoSplice = errors.New("splice not supported")

// splice moves data with splice(2) until src reaches EOF. It returns
// errNoSplice if the first call shows the pair cannot be spliced.
func splice(dst, src *os.File) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, errNoSplice
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, errNoSplice
	}
	var total int64
	for {
		var n int64
		var serr error
		dstFull := false
		rerr := srcRC.Read(func(sfd uintptr) bool {
			// dst's fd is used only inside Control, which holds a
			// reference on it: a dst closed meanwhile (Delete) fails
			// the call instead of its fd number, reused by another
			// open, receiving this container's output.
			cerr := dstRC.Control(func(dfd uintptr) {
				n, serr = unix.Splice(int(sfd), nil, int(dfd), nil, spliceChunk, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
				if serr == unix.EAGAIN && !ready(int(dfd), unix.POLLOUT) {
					dstFull = true
				}
			})
			if cerr != nil {
				serr = cerr
				return true
			}
			if serr == unix.EAGAIN && !dstFull {
				return false // src is empty: the poller waits for data
			}
			return true
		})
		if dstFull {
			serr = nil
		}
		switch {
		case rerr != nil:
			return total, rerr
		case dstFull:
			// Wait until dst drains. The check runs after the poller
			// armed the wait, so no wake-up can be missed.
			if werr := dstRC.Write(func(fd uintptr) bool { return ready(int(fd), unix.POLLOUT) }); werr != nil {
				return total, werr
			}
			continue
		case serr == unix.EINVAL && total == 0:
			return 0, errNoSplice
		case serr != nil:
			return total, serr
		case n == 0:
			return total, nil // EOF
		}
		total += n
	}
}

// ready polls fd once, without waiting.
func ready(fd int, events int16) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0 && fds[0].Revents&(events|unix.POLLERR|unix.POLLHUP) != 0
	}
}

func isRegular(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode().IsRegular()
}
