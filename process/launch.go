//go:build linux

package process

import (
	"os"

	"github.com/keel-shim/keel/process/reaper"
	"github.com/keel-shim/keel/process/stdio"
)

// launched is a process the runtime has just made: its pid, where its exit
// will arrive, and a pidfd to signal it by (nil if it has exited already,
// or the kernel has no pidfds).
type launched struct {
	pid   int
	exits <-chan reaper.Exit
	pidfd *os.File
}

// launch is the one sequence by which the runtime makes a process, for
// create, restore and exec alike: call runs the runtime, which writes the
// process's pid to pidFile. The exit is watched from before the process
// exists, since it may exit before its pid file is read; then io's child
// ends are handed over (for a terminal, its pty taken).
func (c *Container) launch(io *stdio.IO, pidFile string, call func() error) (launched, error) {
	w := c.reaper.Watch()
	defer w.Close()
	err := call()
	if err == nil {
		err = io.Started()
	}
	var pid int
	if err == nil {
		pid, err = readPid(pidFile)
	}
	if err != nil {
		return launched{}, err
	}
	exits, pidfd := w.StartedPidfd(pid)
	return launched{pid: pid, exits: exits, pidfd: pidfd}, nil
}
