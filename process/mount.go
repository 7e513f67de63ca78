//go:build linux

package process

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Mount is one rootfs mount as containerd sends it (from the snapshotter:
// overlay, or bind for a single layer).
type Mount struct {
	Type, Source string
	Options      []string
}

// mountFlags are the options that are flags to mount(2); the value says
// whether the option sets (true) or clears (false) the flag.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro":          {false, unix.MS_RDONLY},
	"rw":          {true, unix.MS_RDONLY},
	"bind":        {false, unix.MS_BIND},
	"rbind":       {false, unix.MS_BIND | unix.MS_REC},
	"nosuid":      {false, unix.MS_NOSUID},
	"suid":        {true, unix.MS_NOSUID},
	"nodev":       {false, unix.MS_NODEV},
	"dev":         {true, unix.MS_NODEV},
	"noexec":      {false, unix.MS_NOEXEC},
	"exec":        {true, unix.MS_NOEXEC},
	"noatime":     {false, unix.MS_NOATIME},
	"relatime":    {false, unix.MS_RELATIME},
	"strictatime": {false, unix.MS_STRICTATIME},
	"sync":        {false, unix.MS_SYNCHRONOUS},
	"dirsync":     {false, unix.MS_DIRSYNC},
	"remount":     {false, unix.MS_REMOUNT},
	"defaults":    {false, 0},
}

// parseOptions splits options into mount(2) flags and the data string.
func parseOptions(options []string) (flags uintptr, data string) {
	var rest []string
	for _, o := range options {
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		if strings.HasPrefix(o, "X-containerd.") {
			continue // hints for containerd's own mount helpers
		}
		rest = append(rest, o)
	}
	return flags, strings.Join(rest, ",")
}

// MountAll mounts the rootfs mounts, in order, on target. On failure it
// leaves nothing mounted.
func MountAll(mounts []Mount, target string) (err error) {
	if err := os.MkdirAll(target, 0o711); err != nil {
		return err
	}
	for _, m := range mounts {
		flags, data := parseOptions(m.Options)
		if len(data) > unix.Getpagesize()-1 {
			return fmt.Errorf("mount options of %s are longer than a page: %w", m.Type, errdefs.ErrNotImplemented)
		}
		if err = unix.Mount(m.Source, target, m.Type, flags&^unix.MS_RDONLY|bindRO(flags), data); err != nil {
			err = fmt.Errorf("mount %s %s on %s: %w", m.Type, m.Source, target, err)
		} else if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
			// A bind mount ignores MS_RDONLY until it is remounted.
			err = unix.Mount("", target, "", flags|unix.MS_REMOUNT, "")
		}
		if err != nil {
			_ = UnmountAll(target) // whatever of this or earlier mounts is there
			return err
		}
	}
	return nil
}

// bindRO keeps MS_RDONLY on non-bind mounts, where it works at once.
func bindRO(flags uintptr) uintptr {
	if flags&unix.MS_BIND != 0 {
		return 0
	}
	return flags & unix.MS_RDONLY
}

// UnmountAll detaches every mount stacked on target. It is not an error if
// nothing is mounted there, or target does not exist.
func UnmountAll(target string) error {
	for {
		err := unix.Unmount(target, unix.MNT_DETACH)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
}
