//go:build linux

package shim

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultSocketDir is where containerd generations before 2.3 expect shim
// sockets; 2.3+ may name another in the bootstrap params.
const DefaultSocketDir = "/run/containerd/s"

// SocketPath names the socket of the shim serving group: the sha256 of the
// containerd address, namespace and group, so that every `start` for the
// same group finds the same shim.
func SocketPath(dir, containerdAddress, ns, group string) string {
	if dir == "" {
		dir = DefaultSocketDir
	}
	sum := sha256.Sum256([]byte(filepath.Join(containerdAddress, ns, group)))
	return filepath.Join(dir, hex.EncodeToString(sum[:]))
}

// SocketAddress is the address containerd dials for a socket path.
func SocketAddress(path string) string { return "unix://" + path }

// socketPathOf undoes SocketAddress.
func socketPathOf(address string) string { return strings.TrimPrefix(address, "unix://") }

// Listen creates the filesystem socket at path, owner-only in an
// owner-only directory. If a shim already serves it, Listen returns
// errInUse; a stale socket left by a dead shim is replaced.
func Listen(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// MkdirAll keeps the mode of a directory that exists; tighten it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		l, err := listenOwnerOnly(path)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt > 0 {
			return nil, err
		}
		if serving(path) {
			return nil, errInUse
		}
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
}

var errInUse = errors.New("socket is served by a running shim")

// listenOwnerOnly binds with a umask that leaves the socket 0600 from the
// start, so it is never reachable by others, not even briefly.
func listenOwnerOnly(path string) (*net.UnixListener, error) {
	old := syscall.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	// The daemon removes the socket itself; closing the listener in the
	// `start` process that made it must not.
	l.SetUnlinkOnClose(false)
	return l, nil
}

// serving tells whether some process accepts connections on path.
func serving(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// socketFile identifies the socket file a shim serves, so that it removes
// only its own: the path is shared by every shim of the group over time,
// and a `start` may have replaced the file with its successor's. The
// change time is part of the identity because a file system may give the
// successor the inode number just freed.
type socketFile struct {
	path     string
	dev, ino uint64
	ctime    syscall.Timespec
}

// ownSocket records the socket file at path as this shim's.
func ownSocket(path string) (socketFile, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return socketFile{}, fmt.Errorf("stat own socket: %w", err)
	}
	return socketFile{path: path, dev: st.Dev, ino: st.Ino, ctime: st.Ctim}, nil
}

// remove deletes the socket file if it is still this shim's.
func (s socketFile) remove() {
	var st syscall.Stat_t
	if syscall.Lstat(s.path, &st) == nil && st.Dev == s.dev && st.Ino == s.ino && st.Ctim == s.ctime {
		os.Remove(s.path)
	}
}
