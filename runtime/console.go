//go:build linux

package runtime

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// ConsoleSocket is where an OCI runtime sends the pty master it made for
// a terminal process (--console-socket): one fd, over SCM_RIGHTS.
type ConsoleSocket struct {
	dir string
	l   *net.UnixListener
}

// NewConsoleSocket listens on a fresh socket in an owner-only directory.
func NewConsoleSocket() (*ConsoleSocket, error) {
	dir, err := os.MkdirTemp("", "keel-pty")
	if err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "pty.sock"), Net: "unix"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &ConsoleSocket{dir: dir, l: l}, nil
}

// Path is the socket to pass as --console-socket.
func (c *ConsoleSocket) Path() string { return filepath.Join(c.dir, "pty.sock") }

// Receive takes the pty master the runtime sent. Call it after the
// runtime's create or exec returned: the fd is queued on the socket by
// then, so the wait is only a guard against a runtime that sent nothing.
func (c *ConsoleSocket) Receive(timeout time.Duration) (*os.File, error) {
	_ = c.l.SetDeadline(time.Now().Add(timeout))
	conn, err := c.l.AcceptUnix()
	if err != nil {
		return nil, fmt.Errorf("console socket: the runtime sent no terminal: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	name := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := conn.ReadMsgUnix(name, oob)
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("console socket: expected one control message, got %d: %v", len(msgs), err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("console socket: expected one fd, got %d: %v", len(fds), err)
	}
	unix.CloseOnExec(fds[0])
	// Non-blocking, so Go's poller serves it instead of an OS thread.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, err
	}
	return os.NewFile(uintptr(fds[0]), string(name[:n])), nil
}

// Close removes the socket and its directory.
func (c *ConsoleSocket) Close() {
	c.l.Close()
	os.RemoveAll(c.dir)
}

// Resize sets a terminal's window size.
func Resize(pty *os.File, width, height uint16) error {
	rc, err := pty.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: width, Row: height})
	})
	if err != nil {
		return err
	}
	return ierr
}
