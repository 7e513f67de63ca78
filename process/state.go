package process

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// State is where a process is in its life.
type State int

const (
	Created State = iota // the runtime created it; it waits for Start
	Running
	Paused
	Stopped // it exited and was reaped; its status is known
	Deleted
)

func (s State) String() string {
	switch s {
	case Created:
		return "created"
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Stopped:
		return "stopped"
	case Deleted:
		return "deleted"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Op is something done to a process, by a request or by the kernel (exit).
type Op string

const (
	OpStart  Op = "start"
	OpPause  Op = "pause"
	OpResume Op = "resume"
	OpKill   Op = "kill"
	OpExec   Op = "exec"   // start an exec process in this (init) process's container
	OpUpdate Op = "update" // change the container's resources
	OpExit   Op = "exit"
	OpDelete Op = "delete"
)

// transitions is every legal transition, in one place. An op missing from
// a state's row is refused. Kill, exec and update leave the state as it is.
var transitions = map[State]map[Op]State{
	Created: {OpStart: Running, OpKill: Created, OpExec: Created, OpUpdate: Created, OpExit: Stopped, OpDelete: Deleted},
	Running: {OpPause: Paused, OpKill: Running, OpExec: Running, OpUpdate: Running, OpExit: Stopped},
	Paused:  {OpResume: Running, OpKill: Paused, OpUpdate: Paused, OpExit: Stopped},
	Stopped: {OpDelete: Deleted},
	Deleted: {OpExit: Deleted}, // a created process deleted with --force exits afterwards
}

// next returns the state after op, or an error of the right errdefs kind.
func next(s State, op Op) (State, error) {
	if to, ok := transitions[s][op]; ok {
		return to, nil
	}
	switch {
	case op == OpKill && (s == Stopped || s == Deleted):
		// containerd treats a signal to a finished process as NotFound.
		return s, fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	case s == Deleted:
		return s, fmt.Errorf("process was deleted: %w", errdefs.ErrNotFound)
	}
	return s, fmt.Errorf("cannot %s a %s process: %w", op, s, errdefs.ErrFailedPrecondition)
}
