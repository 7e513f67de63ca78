//go:build linux

package cgroup

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// WatchOOM calls onOOM each time the OOM killer acts in the cgroup, until
// the returned stop is called or the cgroup goes away. While idle a watch
// is one goroutine parked in Go's poller and one or two fds: no thread,
// no timer, no polling.
func (c *Cgroup) WatchOOM(onOOM func()) (stop func(), err error) {
	if c.IsV2() {
		return c.watchV2(onOOM)
	}
	if _, ok := c.v1["memory"]; !ok {
		return func() {}, nil // no memory controller: nothing can OOM here
	}
	return c.watchV1(onOOM)
}

// watchV1 registers an eventfd for memory.oom_control through
// cgroup.event_control; the kernel signals it on every OOM in the cgroup
// and once more when the cgroup is removed.
func (c *Cgroup) watchV1(onOOM func()) (func(), error) {
	ctl, err := os.Open(c.file("memory", "memory.oom_control"))
	if err != nil {
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		ctl.Close()
		return nil, err
	}
	ev := os.NewFile(uintptr(efd), "oom-eventfd") // non-blocking: in the poller
	reg := fmt.Sprintf("%d %d", efd, ctl.Fd())
	if err := os.WriteFile(c.file("memory", "cgroup.event_control"), []byte(reg), 0); err != nil {
		ev.Close()
		ctl.Close()
		return nil, fmt.Errorf("register OOM eventfd: %w", err)
	}
	go func() {
		buf := make([]byte, 8)
		for {
			if _, err := ev.Read(buf); err != nil {
				return // stopped
			}
			if !c.Exists() {
				return // the removal event, not an OOM
			}
			onOOM()
		}
	}()
	return closeOnce(ev, ctl), nil
}

// watchV2 watches memory.events with inotify and reports each increase of
// its oom_kill count.
func (c *Cgroup) watchV2(onOOM func()) (func(), error) {
	events := c.file("", "memory.events")
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	in := os.NewFile(uintptr(fd), "oom-inotify")
	if _, err := unix.InotifyAddWatch(fd, events, unix.IN_MODIFY); err != nil {
		in.Close()
		return nil, fmt.Errorf("watch %s: %w", events, err)
	}
	last := oomKills(events)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := in.Read(buf)
			if err != nil {
				return // stopped
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				// struct inotify_event: wd, mask, cookie, len, name[len].
				mask := binary.NativeEndian.Uint32(buf[off+4:])
				if mask&unix.IN_IGNORED != 0 {
					return // the cgroup was removed
				}
				off += unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(buf[off+12:]))
			}
			if now := oomKills(events); now > last {
				last = now
				onOOM()
			}
		}
	}()
	return closeOnce(in), nil
}

func oomKills(path string) uint64 {
	var kills uint64
	_ = readKeyed(path, func(k string, v uint64) {
		if k == "oom_kill" {
			kills = v
		}
	})
	return kills
}

// closeOnce returns a stop function that closes files once; closing the
// watched fd ends the goroutine's Read.
func closeOnce(files ...*os.File) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, f := range files {
				f.Close()
			}
		})
	}
}
