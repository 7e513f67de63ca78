package process

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

var (
	allStates = []State{Created, Running, Paused, Stopped, Deleted}
	allOps    = []Op{OpStart, OpPause, OpResume, OpKill, OpExec, OpUpdate, OpExit, OpDelete}
)

// TestAllOpsListed keeps the exhaustive tests below exhaustive: an op
// added to the table must be added to allOps too.
func TestAllOpsListed(t *testing.T) {
	known := make(map[Op]bool)
	for _, op := range allOps {
		known[op] = true
	}
	for s, row := range transitions {
		for op := range row {
			if !known[op] {
				t.Errorf("transitions[%s] has op %q missing from allOps", s, op)
			}
		}
	}
}

// TestNextFollowsTable checks next for every state and op against the
// transitions table: allowed ops go where the table says, refused ones
// keep the state and carry the errdefs kind containerd expects.
func TestNextFollowsTable(t *testing.T) {
	for _, s := range allStates {
		for _, op := range allOps {
			t.Run(s.String()+"/"+string(op), func(t *testing.T) {
				got, err := next(s, op)
				if want, ok := transitions[s][op]; ok {
					if err != nil || got != want {
						t.Fatalf("next(%s, %s) = %s, %v; want %s, nil", s, op, got, err, want)
					}
					return
				}
				if err == nil {
					t.Fatalf("next(%s, %s) = %s, nil; want a refusal", s, op, got)
				}
				if got != s {
					t.Errorf("refused next(%s, %s) moved the state to %s", s, op, got)
				}
				// A signal to a finished process and anything done to a
				// deleted one is NotFound; every other refusal is a
				// precondition failure.
				wantNotFound := s == Deleted || op == OpKill && s == Stopped
				if wantNotFound {
					if !errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err) {
						t.Errorf("next(%s, %s) error %q: want NotFound only", s, op, err)
					}
				} else if !errdefs.IsFailedPrecondition(err) || errdefs.IsNotFound(err) {
					t.Errorf("next(%s, %s) error %q: want FailedPrecondition only", s, op, err)
				}
			})
		}
	}
}

// TestTransitions pins the lifecycle itself, independently of the table,
// so an accidental edit of the table is caught.
func TestTransitions(t *testing.T) {
	tests := []struct {
		from State
		op   Op
		to   State
		ok   bool
	}{
		{Created, OpStart, Running, true},
		{Created, OpKill, Created, true},
		{Created, OpExec, Created, true},
		{Created, OpUpdate, Created, true},
		{Created, OpExit, Stopped, true},
		{Created, OpDelete, Deleted, true},
		{Created, OpPause, Created, false},
		{Created, OpResume, Created, false},
		{Running, OpPause, Paused, true},
		{Running, OpKill, Running, true},
		{Running, OpExec, Running, true},
		{Running, OpUpdate, Running, true},
		{Running, OpExit, Stopped, true},
		{Running, OpStart, Running, false},
		{Running, OpResume, Running, false},
		{Running, OpDelete, Running, false},
		{Paused, OpResume, Running, true},
		{Paused, OpKill, Paused, true},
		{Paused, OpExit, Stopped, true},
		{Paused, OpUpdate, Paused, true},
		{Paused, OpPause, Paused, false},
		{Paused, OpExec, Paused, false},
		{Paused, OpDelete, Paused, false},
		{Stopped, OpDelete, Deleted, true},
		{Stopped, OpKill, Stopped, false},
		{Stopped, OpExit, Stopped, false},
		{Stopped, OpStart, Stopped, false},
		{Stopped, OpUpdate, Stopped, false},
		{Deleted, OpExit, Deleted, true},
		{Deleted, OpDelete, Deleted, false},
		{Deleted, OpKill, Deleted, false},
		{Deleted, OpUpdate, Deleted, false},
	}
	for _, tt := range tests {
		got, err := next(tt.from, tt.op)
		if (err == nil) != tt.ok || got != tt.to {
			t.Errorf("next(%s, %s) = %s, %v; want %s, ok=%v", tt.from, tt.op, got, err, tt.to, tt.ok)
		}
	}
}

func TestNextUnknownOp(t *testing.T) {
	// An op nobody defined is refused, never treated as a transition.
	for _, s := range allStates {
		got, err := next(s, Op("bogus"))
		if err == nil || got != s {
			t.Errorf("next(%s, bogus) = %s, %v; want %s and an error", s, got, err, s)
		}
	}
}

func TestNextErrorMessages(t *testing.T) {
	// The messages say what was refused, so logs are useful.
	_, err := next(Running, OpStart)
	if err == nil || !strings.Contains(err.Error(), "cannot start a running process") {
		t.Errorf("next(running, start) error = %v", err)
	}
	_, err = next(Stopped, OpKill)
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("next(stopped, kill) error = %v, want NotFound", err)
	}
}

func TestStateString(t *testing.T) {
	tests := []struct {
		s    State
		want string
	}{
		{Created, "created"},
		{Running, "running"},
		{Paused, "paused"},
		{Stopped, "stopped"},
		{Deleted, "deleted"},
		{State(42), "state(42)"},
		{State(-1), "state(-1)"},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("State(%d).String() = %q, want %q", int(tt.s), got, tt.want)
		}
	}
	// Every state in the table has a row and a proper name.
	for s := range transitions {
		if got := s.String(); strings.HasPrefix(got, "state(") {
			t.Errorf("state %d in transitions has no name: %q", int(s), got)
		}
	}
	if len(transitions) != len(allStates) {
		t.Errorf("transitions has %d rows, want one per state (%d)", len(transitions), len(allStates))
	}
}
