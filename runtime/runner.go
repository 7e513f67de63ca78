//go:build linux

package runtime

import (
	"context"
	"os/exec"
	"syscall"
)

// ExecRunner is a Runner without the shim's reaper, for commands that run
// where no reaper runs (the shim's `delete` and `-info`): os/exec waits itself.
// Like the reaper it reports a death by signal as 128+signal, and when ctx
// ends it kills the child, still waits for it, and returns ctx's error.
type ExecRunner struct{}

func (ExecRunner) Run(ctx context.Context, cmd *exec.Cmd) (int, error) {
	if err := cmd.Start(); err != nil {
		return -1, err
	}
	waited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // a non-zero exit is a status, not a failure to run
		close(waited)
	}()
	var err error
	select {
	case <-waited:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-waited
		err = ctx.Err()
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal()), err
	}
	return ws.ExitStatus(), err
}
