//go:build linux

package integration

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// notifySocket plays systemd's side of NOTIFY_SOCKET for one Daemon: a
// unix datagram socket in the daemon's dir, in containerd's environment as
// systemd puts it there for a Type=notify unit. It records every message
// with the sender's pid (SO_PASSCRED), so that a test can wait for
// containerd's READY=1 and see whether anything else (a shim, runc, a
// container) wrote to it: systemd would take that for containerd's word.
type notifySocket struct {
	path string
	conn *net.UnixConn

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every message
	msgs    []notifyMsg
}

type notifyMsg struct {
	Pid  int32 // -1 if the kernel gave no credentials
	Text string
	At   time.Time
}

func listenNotify(path string) (*notifySocket, error) {
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		conn.Close()
		return nil, fmt.Errorf("SO_PASSCRED on %s: %v %v", path, err, serr)
	}
	n := &notifySocket{path: path, conn: conn, changed: make(chan struct{})}
	go n.read()
	return n, nil
}

func (n *notifySocket) read() {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return // closed
		}
		m := notifyMsg{Pid: -1, Text: string(buf[:nb]), At: time.Now()}
		if cmsgs, err := unix.ParseSocketControlMessage(oob[:noob]); err == nil {
			for _, c := range cmsgs {
				if cred, err := unix.ParseUnixCredentials(&c); err == nil {
					m.Pid = cred.Pid
				}
			}
		}
		n.mu.Lock()
		n.msgs = append(n.msgs, m)
		close(n.changed)
		n.changed = make(chan struct{})
		n.mu.Unlock()
	}
}

// mark returns how many messages came so far, for waitReady.
func (n *notifySocket) mark() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.msgs)
}

// readySince tells whether pid sent READY=1 after the first `since`
// messages, and returns a channel closed on the next message.
func (n *notifySocket) readySince(since int, pid int) (bool, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.msgs[since:] {
		if int(m.Pid) == pid && hasNotifyField(m.Text, "READY=1") {
			return true, nil
		}
	}
	return false, n.changed
}

// foreign returns the messages not sent by one of the pids.
func (n *notifySocket) foreign(pids map[int]bool) []notifyMsg {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []notifyMsg
	for _, m := range n.msgs {
		if !pids[int(m.Pid)] {
			out = append(out, m)
		}
	}
	return out
}

func (n *notifySocket) Close() error { return n.conn.Close() }

// hasNotifyField: sd_notify messages are newline-separated assignments.
func hasNotifyField(msg, field string) bool {
	for _, l := range strings.Split(msg, "\n") {
		if l == field {
			return true
		}
	}
	return false
}
