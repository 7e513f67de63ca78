//go:build linux

package stdio

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sameFile reports whether f is the file at path (same device and inode).
func sameFile(t *testing.T, f *os.File, path string) bool {
	t.Helper()
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(path, &b); err != nil {
		t.Fatal(err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

func mkfifo(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestOutputFIFODirect: with no OutputBuffer and no IoUid/IoGid, the
// process writes into containerd's FIFO itself. The reader gets its bytes
// and, once the process's end is closed, EOF; while the reader is away a
// write still succeeds (the shim's own reader prevents EPIPE); after Close
// (Delete) a writer that outlived the process gets EPIPE, as it did when
// the shim's copy ended.
func TestOutputFIFODirect(t *testing.T) {
	path := mkfifo(t, "stdout")
	reader, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0) // containerd's
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(context.Background(), Request{Stdout: path, Stderr: path}, Config{UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	child := p.Child()
	if child.Stdout == nil || !sameFile(t, child.Stdout, path) {
		t.Fatalf("the process's stdout is not the FIFO %s", path)
	}
	if child.Stderr != child.Stdout {
		t.Fatal("stdout and stderr to one FIFO should share one fd")
	}
	if flags, _ := unix.FcntlInt(child.Stdout.Fd(), unix.F_GETFL, 0); flags&unix.O_NONBLOCK != 0 || flags&unix.O_ACCMODE != unix.O_WRONLY {
		t.Fatalf("the process's stdout has flags %#x, want blocking and write-only", flags)
	}
	// The shim's own reader stays out of Go's poller (which takes only
	// non-blocking fds), or every write would wake the shim.
	var keeps int
	for _, c := range p.closers {
		if f, ok := c.(*os.File); ok && f.Name() == path {
			keeps++
			// Not f.Fd(): that would set the fd blocking itself.
			var flags int
			rc, _ := f.SyscallConn()
			rc.Control(func(fd uintptr) { flags, _ = unix.FcntlInt(fd, unix.F_GETFL, 0) })
			if flags&unix.O_NONBLOCK != 0 {
				t.Fatalf("the shim's reader of %s is non-blocking (flags %#x): in Go's poller", path, flags)
			}
		}
	}
	if keeps != 1 {
		t.Fatalf("the shim holds %d fds of %s, want its one reader", keeps, path)
	}
	// The process: a dup of its end, which outlives Started, as a
	// grandchild's would.
	proc, err := dupFile(child.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Close()
	if _, err := proc.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Started(); err != nil {
		t.Fatal(err)
	}
	// A copy would still wait for proc, which holds the stdout open.
	if !p.Drain(100 * time.Millisecond) {
		t.Fatal("Drain waited for a copy, but none should run for a direct FIFO")
	}
	buf := make([]byte, 64)
	if n, err := reader.Read(buf); err != nil || string(buf[:n]) != "hello\n" {
		t.Fatalf("reader got %q, %v", buf[:n], err)
	}
	reader.Close() // containerd goes away
	if _, err := proc.Write([]byte("while away\n")); err != nil {
		t.Fatalf("write with containerd away: %v, want it held in the FIFO", err)
	}
	p.Close() // Delete
	if _, err := proc.Write([]byte("after delete\n")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write after Delete: %v, want EPIPE", err)
	}
}

// TestOutputFIFOReaderSeesEOF: the reader's EOF comes when the process's
// last writer closes, though the shim still holds its reader.
func TestOutputFIFOReaderSeesEOF(t *testing.T) {
	path := mkfifo(t, "stdout")
	reader, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	p, err := New(context.Background(), Request{Stdout: path}, Config{UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	proc, err := dupFile(p.Child().Stdout)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Started(); err != nil {
		t.Fatal(err)
	}
	proc.Write([]byte("last words\n"))
	proc.Close() // the process exits
	got, err := io.ReadAll(reader)
	if err != nil || string(got) != "last words\n" {
		t.Fatalf("reader got %q, %v; want the output, then EOF", got, err)
	}
}

// TestOutputFIFOCopiedWhenNeeded: an OutputBuffer, or a pipe owner to set,
// keeps the shim's copy between the process and the FIFO.
func TestOutputFIFOCopiedWhenNeeded(t *testing.T) {
	for name, cfg := range map[string]Config{
		"buffer": {UID: -1, GID: -1, Buffer: OutputBuffer{Size: 1 << 20}},
		"io-uid": {UID: os.Getuid(), GID: 12345},
	} {
		t.Run(name, func(t *testing.T) {
			path := mkfifo(t, "stdout")
			p, err := New(context.Background(), Request{Stdout: path}, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			var st unix.Stat_t
			if err := unix.Fstat(int(p.Child().Stdout.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			if sameFile(t, p.Child().Stdout, path) || st.Mode&unix.S_IFMT != unix.S_IFIFO {
				t.Fatal("the process writes into the FIFO itself; want a pipe of the shim's")
			}
		})
	}
}

// TestOutputFIFORefusesOthers: a stdout path that is not a FIFO is
// refused, with nothing opened.
func TestOutputFIFORefusesOthers(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(context.Background(), Request{Stdout: file}, Config{UID: -1, GID: -1}); err == nil {
		t.Fatal("a regular file was accepted as an output FIFO")
	}
	if _, err := openFIFO(file, unix.O_RDONLY|unix.O_NONBLOCK); err == nil {
		t.Fatal("openFIFO opened a regular file")
	}
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
