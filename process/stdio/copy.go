//go:build linux

package stdio

import (
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// spliceChunk is the most one splice call moves: a pipe holds 64 KiB by
// default, so this never limits a call in practice.
const spliceChunk = 1 << 20

// A process that writes a few kilobytes at a time as fast as it can (busy
// loggers, `head`, `cat`) would wake the shim, and the shim its reader, for
// every write: on a small machine the three then spend their time switching
// instead of copying. When moves of less than coalesceBelow come within
// trickleGap of each other, the copier naps for coalesceNap before the next
// one, so that it moves what several writes left. A process that writes now
// and then never waits; a stream's latency grows by at most the nap.
const (
	coalesceBelow = 16 << 10
	trickleGap    = 200 * time.Microsecond
	coalesceNap   = 100 * time.Microsecond
)

// trickle detects a fast stream of small writes.
type trickle struct{ lastSmall time.Time }

// nap waits coalesceNap if the last move was small and recent. It blocks
// the thread, not just the goroutine: Go's timers are not this fine.
func (t *trickle) nap() {
	if !t.lastSmall.IsZero() && time.Since(t.lastSmall) < trickleGap {
		_ = unix.Nanosleep(&unix.Timespec{Nsec: coalesceNap.Nanoseconds()}, nil)
	}
}

func (t *trickle) moved(n int64) {
	if n < coalesceBelow {
		t.lastSmall = time.Now()
	} else {
		t.lastSmall = time.Time{}
	}
}

// bufPool holds copy buffers for the paths splice cannot take, so that
// idle processes hold none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// A copy into a file reads and writes through user space (splice(2)
// refuses the O_APPEND file), so each byte is copied twice, as in
// containerd's shim. What Keel can save is wake-ups: it first grows the
// process's pipe to filePipeSize, so that the process keeps writing while
// the shim writes the file and each wake-up finds more to move. It reads
// through the pooled 32 KiB buffers: in the shim, under make bench (dd of
// 64 KiB and 1 MiB blocks into a file on ext4), 64 KiB and 256 KiB reads
// cost about twice the CPU per GiB, all of it in the kernel's copy into
// the page cache, though a copier outside containerd showed the opposite.
// The pipe's pages are charged to the writer's memory cgroup, and only
// exist while the shim lags behind.
const filePipeSize = 1 << 20

// copyStream copies src to dst until src ends. From a pipe into a pipe or
// FIFO it splices, so the bytes never enter user space; into a file (an
// O_APPEND one, which splice(2) refuses) it reads into a pooled buffer and
// writes (copyToFile); where the kernel refuses splice (a terminal) it
// copies through a pooled buffer.
// Both files stay in Go's poller: no OS thread blocks per stream.
func copyStream(dst, src *os.File) (int64, error) {
	if isRegular(dst) {
		return copyToFile(dst, src)
	}
	n, err := splice(dst, src)
	if !errors.Is(err, errNoSplice) {
		return n, err
	}
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	m, err := io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *buf)
	return n + m, err
}

// copyToFile reads src as it becomes readable, coalescing small writes,
// and writes what it read into dst.
func copyToFile(dst, src *os.File) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	// Best effort: a terminal is no pipe, and a kernel may refuse the
	// size (fs.pipe-max-size); the copy works either way.
	_ = srcRC.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, filePipeSize) })
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	var total int64
	var t trickle
	for {
		var n int
		var rerr error
		err := srcRC.Read(func(fd uintptr) bool {
			t.nap()
			n, rerr = unix.Read(int(fd), *buf)
			return rerr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return total, err
		case rerr == unix.EINTR:
			continue
		case rerr != nil:
			return total, rerr
		case n == 0:
			return total, nil // EOF
		}
		t.moved(int64(n))
		if _, err := dst.Write((*buf)[:n]); err != nil {
			return total, err
		}
		total += int64(n)
	}
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
	var t trickle
	for {
		var n int64
		var serr error
		dstFull := false
		rerr := srcRC.Read(func(sfd uintptr) bool {
			t.nap()
			// dst's fd is used only inside Control, which holds a
			// reference on it: a dst closed meanwhile (Delete) fails
			// the call instead of its fd number, reused by another
			// open, receiving this container's output.
			cerr := dstRC.Control(func(dfd uintptr) {
				n, serr = unix.Splice(int(sfd), nil, int(dfd), nil, spliceChunk, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
				// EAGAIN: src was empty or dst was full. Tell them
				// apart by src, which only this copier drains: had
				// it data, waiting for more could wait forever (a
				// writer blocked on a full src writes nothing more),
				// so wait for dst instead, even if its reader has
				// made room since.
				if serr == unix.EAGAIN && ready(int(sfd), unix.POLLIN) {
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
		t.moved(n)
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
