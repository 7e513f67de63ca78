package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

// sentinels is every errdefs kind, to check that an error has exactly the
// kind it should and no other.
var sentinels = []error{
	errdefs.ErrUnknown, errdefs.ErrInvalidArgument, errdefs.ErrNotFound,
	errdefs.ErrAlreadyExists, errdefs.ErrPermissionDenied, errdefs.ErrResourceExhausted,
	errdefs.ErrFailedPrecondition, errdefs.ErrConflict, errdefs.ErrNotModified,
	errdefs.ErrAborted, errdefs.ErrOutOfRange, errdefs.ErrNotImplemented,
	errdefs.ErrInternal, errdefs.ErrUnavailable, errdefs.ErrDataLoss,
	errdefs.ErrUnauthenticated,
}

// checkKind fails unless err is of kind want (nil: of no kind at all).
func checkKind(t *testing.T, err, want error) {
	t.Helper()
	for _, s := range sentinels {
		if got := errors.Is(err, s); got != (s == want) {
			t.Errorf("errors.Is(%q, %v) = %v, want %v", err, s, got, s == want)
		}
	}
}

// TestClassify uses the messages runc 1.1.5 and crun 1.8.1 print, captured
// with `--log FILE --log-format json` (the "msg" of the last error line).
func TestClassify(t *testing.T) {
	tests := []struct {
		source string // who said it, in which situation
		op     string
		msg    string
		want   error
	}{
		// Container unknown to the runtime.
		{"runc state nosuch", "state", "container does not exist", errdefs.ErrNotFound},
		{"runc kill nosuch 9", "kill", "container does not exist", errdefs.ErrNotFound},
		{"runc delete nosuch", "delete", "container does not exist", errdefs.ErrNotFound},
		{"runc pause nosuch", "pause", "container does not exist", errdefs.ErrNotFound},
		{"runc ps nosuch", "ps", "container does not exist", errdefs.ErrNotFound},
		{"runc exec nosuch", "exec", "exec failed: container does not exist", errdefs.ErrNotFound},
		{"crun state/kill/exec nosuch", "exec", "error opening file `/run/crun/nosuch/status`: No such file or directory", errdefs.ErrNotFound},
		{"crun delete nosuch", "delete", "cannot open directory '/run/crun/nosuch': No such file or directory", errdefs.ErrNotFound},

		// Signalling or pausing a process that has exited.
		{"runc kill of a stopped container", "kill", "container not running", errdefs.ErrNotFound},
		{"crun kill of a stopped container", "kill", "open pidfd: No such process", errdefs.ErrNotFound},
		{"crun pause of a stopped container", "pause", "the container `c1` is not running: No such process", errdefs.ErrNotFound},
		{"shim wording", "kill", "process already finished", errdefs.ErrNotFound},

		// Creating what exists.
		{"runc create twice", "create", "runc create failed: container with given ID already exists", errdefs.ErrAlreadyExists},
		{"crun create twice", "create", "container `c1` already exists", errdefs.ErrAlreadyExists},

		// The process to start does not exist.
		{"Go exec", "exec", `exec: "nosuch": executable file not found in $PATH`, errdefs.ErrFailedPrecondition},
		{"runc exec nosuch", "exec", `exec failed: unable to start container process: exec: "nosuch": executable file not found in $PATH`, errdefs.ErrFailedPrecondition},
		{"runc create, args nosuch", "create", `runc create failed: unable to start container process: exec: "nosuch": executable file not found in $PATH`, errdefs.ErrFailedPrecondition},
		{"runc exec /nosuch", "exec", `exec failed: unable to start container process: exec: "/nosuch": stat /nosuch: no such file or directory`, errdefs.ErrFailedPrecondition},
		{"crun exec nosuch", "exec", "executable file `nosuch` not found in $PATH: No such file or directory", errdefs.ErrFailedPrecondition},
		{"crun create, args nosuch", "create", "executable file `nosuch` not found in $PATH: No such file or directory", errdefs.ErrFailedPrecondition},

		// Wrong state for the request.
		{"runc resume of a running container", "resume", "container not paused", errdefs.ErrFailedPrecondition},
		{"crun exec in a paused container", "exec", "the container `c1` is paused", errdefs.ErrFailedPrecondition},

		// Nothing the shim can act on: no kind.
		{"crun create, hybrid cgroups", "create", "cgroups in hybrid mode not supported, drop all controllers from cgroupv2", nil},
		{"crun exec setns", "exec", "fail startup", nil},
		{"silent failure", "start", "exit status 1", nil},
		{"empty", "kill", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.source, func(t *testing.T) {
			if got := classify(tt.op, tt.msg); got != tt.want {
				t.Errorf("classify(%q, %q) = %v, want %v", tt.op, tt.msg, got, tt.want)
			}
			// The kind is what errors.Is sees through *Error, and the
			// only kind it sees.
			checkKind(t, &Error{Op: tt.op, Binary: "/usr/sbin/runc", Msg: tt.msg}, tt.want)
		})
	}
}

func TestClassifyNoSuchFileDependsOnOp(t *testing.T) {
	// "no such file or directory" means a missing executable only for the
	// calls that start a process.
	const msg = "open /x: no such file or directory"
	for _, op := range []string{"create", "exec"} {
		if got := classify(op, msg); got != errdefs.ErrFailedPrecondition {
			t.Errorf("classify(%s) = %v, want FailedPrecondition", op, got)
		}
	}
	for _, op := range []string{"start", "pause", "update"} {
		if got := classify(op, msg); got != nil {
			t.Errorf("classify(%s) = %v, want none", op, got)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	cause := errors.New("the cause")
	tests := []struct {
		name string
		err  *Error
		want string
	}{
		{"prefixed", &Error{Op: "kill", Binary: "/usr/sbin/runc", Msg: "container not running"}, "runc kill failed: container not running"},
		{"runc already prefixed", &Error{Op: "create", Binary: "runc", Msg: "runc create failed: container with given ID already exists"}, "runc create failed: container with given ID already exists"},
		{"other binary", &Error{Op: "create", Binary: "/usr/bin/crun", Msg: "container `c1` already exists"}, "crun create failed: container `c1` already exists"},
		{"with cause", &Error{Op: "start", Binary: "crun", Msg: "boom", cause: cause}, "crun start failed: boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
	// The cause stays reachable, next to the kind.
	err := &Error{Op: "kill", Binary: "runc", Msg: "container not running", cause: cause}
	if !errors.Is(err, cause) || !errdefs.IsNotFound(err) {
		t.Errorf("errors.Is: cause %v, NotFound %v; want both", errors.Is(err, cause), errdefs.IsNotFound(err))
	}
}

func TestLastError(t *testing.T) {
	tests := []struct {
		name string
		log  string
		want string
	}{
		{
			name: "last of several errors",
			log: `{"level":"info","msg":"starting","time":"2026-11-22T08:04:24Z"}
{"level":"error","msg":"first","time":"2026-11-22T08:04:24Z"}
{"level":"warning","msg":"a warning","time":"2026-11-22T08:04:24Z"}
{"level":"error","msg":"second","time":"2026-11-22T08:04:24Z"}
{"level":"info","msg":"after","time":"2026-11-22T08:04:24Z"}
`,
			want: "second",
		},
		{
			// crun 1.8.1, exec into a container whose init has gone.
			name: "crun, fields in another order",
			log: `{"msg":"fail startup","level":"error","time":"2026-11-22T08:04:54.485425Z"}
{"msg":"setns(pid=7919, CLONE_NEWUSER): No such process","level":"error","time":"2026-11-22T08:04:54.485670Z"}
`,
			want: "setns(pid=7919, CLONE_NEWUSER): No such process",
		},
		{"fatal counts", `{"level":"fatal","msg":"it died"}`, "it died"},
		{"panic counts", `{"level":"panic","msg":"it panicked"}` + "\n\n", "it panicked"},
		{"not JSON", "one\ntwo\n\nlast line  \n\n", "last line"},
		{"empty file", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "log.json")
			if err := os.WriteFile(path, []byte(tt.log), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := lastError(path); got != tt.want {
				t.Errorf("lastError = %q, want %q", got, tt.want)
			}
		})
	}
	if got := lastError(filepath.Join(t.TempDir(), "missing")); got != "" {
		t.Errorf("lastError of a missing file = %q, want empty", got)
	}
}

func TestTrimOutput(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"\n\n", ""},
		{"only", "only"},
		{"first\nsecond\n", "second"},
		{"first\n  second  \n\n", "second"},
	}
	for _, tt := range tests {
		if got := trimOutput([]byte(tt.in)); got != tt.want {
			t.Errorf("trimOutput(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
