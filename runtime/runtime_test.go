//go:build linux

package runtime

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// fake is a fake runtime binary: a shell script named runc that records
// its argv (one argument a line) and copies the files given after
// --process and --resources, then runs body.
type fake struct {
	bin string // the script
	dir string // where it records what it was given
}

func newFake(t *testing.T, body string) fake {
	t.Helper()
	dir := t.TempDir()
	script := `#!/bin/sh
printf '%s\n' "$@" > "` + dir + `/argv"
log=
prev=
for a in "$@"; do
	case "$prev" in
	--log) log=$a ;;
	--process) cp "$a" "` + dir + `/process.json" ;;
	--resources) cp "$a" "` + dir + `/resources.json" ;;
	esac
	prev=$a
done
` + body + "\n"
	bin := filepath.Join(dir, "runc")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return fake{bin: bin, dir: dir}
}

// argv is what the fake was last called with.
func (f fake) argv(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(f.dir, "argv"))
	if err != nil {
		t.Fatalf("the fake runtime was not called: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

// newRuntime drives f with a fresh, empty LogDir.
func newRuntime(t *testing.T, f fake, systemd bool) (*Runtime, Config) {
	t.Helper()
	cfg := Config{Binary: f.bin, Root: "/run/keel-test/ns", SystemdCgroup: systemd, LogDir: t.TempDir()}
	return New(cfg, ExecRunner{}), cfg
}

// checkNoLeftovers fails if a call left its temporary files in LogDir.
func checkNoLeftovers(t *testing.T, cfg Config) {
	t.Helper()
	ents, err := os.ReadDir(cfg.LogDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left in LogDir: %s", e.Name())
	}
}

// matchArgs compares argv with want, where a want element containing '*'
// is a filepath.Match pattern (for the temporary file names).
func matchArgs(t *testing.T, got, want []string) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		if strings.Contains(want[i], "*") {
			ok, _ = filepath.Match(want[i], got[i])
		} else {
			ok = got[i] == want[i]
		}
	}
	if !ok {
		t.Errorf("argv:\n got %q\nwant %q", got, want)
	}
}

func TestNewDefaultBinary(t *testing.T) {
	if got := New(Config{}, ExecRunner{}).Binary(); got != "runc" {
		t.Errorf("Binary() = %q, want runc", got)
	}
	if got := New(Config{Binary: "/usr/bin/crun"}, ExecRunner{}).Binary(); got != "/usr/bin/crun" {
		t.Errorf("Binary() = %q, want /usr/bin/crun", got)
	}
}

// TestArgv checks the command line of every call: the global flags first,
// then the subcommand with its options, the container ID last (before the
// signal for kill), as runc and crun parse them.
func TestArgv(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		systemd bool
		call    func(r *Runtime) error
		want    []string // after the global flags; LOGDIR is replaced
	}{
		{
			name: "create",
			call: func(r *Runtime) error {
				return r.Create(ctx, "c1", CreateOpts{Bundle: "/b/c1", PidFile: "/b/c1/init.pid"})
			},
			want: []string{"create", "--bundle", "/b/c1", "--pid-file", "/b/c1/init.pid", "c1"},
		},
		{
			name:    "create with every option",
			systemd: true,
			call: func(r *Runtime) error {
				return r.Create(ctx, "c1", CreateOpts{Bundle: "/b/c1", PidFile: "/b/c1/init.pid",
					ConsoleSocket: "/tmp/console.sock", NoPivot: true, NoNewKeyring: true})
			},
			want: []string{"create", "--bundle", "/b/c1", "--pid-file", "/b/c1/init.pid",
				"--console-socket", "/tmp/console.sock", "--no-pivot", "--no-new-keyring", "c1"},
		},
		{"start", false, func(r *Runtime) error { return r.Start(ctx, "c1") }, []string{"start", "c1"}},
		{"kill", false, func(r *Runtime) error { return r.Kill(ctx, "c1", syscall.SIGTERM, false) }, []string{"kill", "c1", "15"}},
		{"kill all", false, func(r *Runtime) error { return r.Kill(ctx, "c1", syscall.SIGKILL, true) }, []string{"kill", "--all", "c1", "9"}},
		{"pause", false, func(r *Runtime) error { return r.Pause(ctx, "c1") }, []string{"pause", "c1"}},
		{"resume", false, func(r *Runtime) error { return r.Resume(ctx, "c1") }, []string{"resume", "c1"}},
		{"delete", false, func(r *Runtime) error { return r.Delete(ctx, "c1", false) }, []string{"delete", "c1"}},
		{"delete force", true, func(r *Runtime) error { return r.Delete(ctx, "c1", true) }, []string{"delete", "--force", "c1"}},
		{"ps", false, func(r *Runtime) error { _, err := r.Ps(ctx, "c1"); return err }, []string{"ps", "--format", "json", "c1"}},
		{"state", false, func(r *Runtime) error { _, err := r.State(ctx, "c1"); return err }, []string{"state", "c1"}},
		{
			name: "exec",
			call: func(r *Runtime) error {
				return r.Exec(ctx, "c1", []byte(`{}`), ExecOpts{PidFile: "/b/c1/e1.pid"})
			},
			want: []string{"exec", "--detach", "--process", "LOGDIR/.exec-process-*.json", "--pid-file", "/b/c1/e1.pid", "c1"},
		},
		{
			name: "exec with console",
			call: func(r *Runtime) error {
				return r.Exec(ctx, "c1", []byte(`{}`), ExecOpts{PidFile: "/b/c1/e1.pid", ConsoleSocket: "/tmp/c.sock"})
			},
			want: []string{"exec", "--detach", "--process", "LOGDIR/.exec-process-*.json", "--pid-file", "/b/c1/e1.pid",
				"--console-socket", "/tmp/c.sock", "c1"},
		},
		{
			name: "update",
			call: func(r *Runtime) error { return r.Update(ctx, "c1", []byte(`{}`)) },
			want: []string{"update", "--resources", "LOGDIR/.resources-*.json", "c1"},
		},
	}
	// Answers valid for ps and state; the other calls ignore stdout.
	f := newFake(t, `case " $* " in
*" ps "*) echo '[]' ;;
*" state "*) echo '{"id":"c1","pid":1,"status":"running"}' ;;
esac`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, cfg := newRuntime(t, f, tt.systemd)
			if err := tt.call(r); err != nil {
				t.Fatalf("call: %v", err)
			}
			want := []string{"--root", cfg.Root, "--log", "LOGDIR/.runtime-*.log", "--log-format", "json"}
			if tt.systemd {
				want = append(want, "--systemd-cgroup")
			}
			want = append(want, tt.want...)
			for i := range want {
				want[i] = strings.Replace(want[i], "LOGDIR", cfg.LogDir, 1)
			}
			matchArgs(t, f.argv(t), want)
			checkNoLeftovers(t, cfg)
		})
	}
}

func TestPs(t *testing.T) {
	tests := []struct {
		name    string
		stdout  string
		want    []int
		wantErr string
	}{
		{name: "pids", stdout: "[1,2,3]", want: []int{1, 2, 3}},
		{name: "crun layout", stdout: "[\n  7919\n]", want: []int{7919}},
		{name: "stopped container (runc prints null)", stdout: "null", want: nil},
		{name: "garbage", stdout: "this is not json", wantErr: "bad output"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, "printf '%s\\n' '"+tt.stdout+"'")
			r, cfg := newRuntime(t, f, false)
			pids, err := r.Ps(context.Background(), "c1")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Ps = %v, %v; want an error saying %q", pids, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.stdout) {
					t.Errorf("error %q does not quote the output", err)
				}
			} else {
				if err != nil {
					t.Fatalf("Ps: %v", err)
				}
				if !equalInts(pids, tt.want) {
					t.Errorf("Ps = %v, want %v", pids, tt.want)
				}
			}
			matchArgs(t, f.argv(t), []string{"--root", cfg.Root, "--log", cfg.LogDir + "/.runtime-*.log",
				"--log-format", "json", "ps", "--format", "json", "c1"})
			checkNoLeftovers(t, cfg)
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestState(t *testing.T) {
	// The output of runc 1.1.5 `state` for a stopped container.
	f := newFake(t, `cat <<'EOF'
{
  "ociVersion": "1.0.2-dev",
  "id": "c1",
  "pid": 0,
  "status": "stopped",
  "bundle": "/tmp/kb/c1",
  "rootfs": "/tmp/kb/c1/rootfs",
  "created": "2026-11-22T08:04:36.572383234Z",
  "owner": ""
}
EOF`)
	r, _ := newRuntime(t, f, false)
	st, err := r.State(context.Background(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if *st != (State{ID: "c1", Pid: 0, Status: "stopped"}) {
		t.Errorf("State = %+v", *st)
	}

	bad := newFake(t, "echo garbage")
	r, _ = newRuntime(t, bad, false)
	if st, err := r.State(context.Background(), "c1"); err == nil || !strings.Contains(err.Error(), "bad output") {
		t.Errorf("State of garbage = %v, %v; want a bad output error", st, err)
	}
}

// TestFailureMessage: a failed call reports the runtime's own words, from
// its JSON log first, else from its output, else its exit status.
func TestFailureMessage(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string // the whole Error()
	}{
		{
			name: "JSON log",
			body: `echo '{"level":"info","msg":"starting"}' > "$log"
echo '{"level":"error","msg":"boom: it broke"}' >> "$log"
echo 'stdout noise'
exit 1`,
			want: "runc create failed: boom: it broke",
		},
		{
			name: "runc's own prefix is not repeated",
			body: `echo '{"level":"error","msg":"runc create failed: container with given ID already exists"}' > "$log"
exit 1`,
			want: "runc create failed: container with given ID already exists",
		},
		{
			name: "exit status when silent",
			body: `exit 2`,
			want: "runc create failed: exit status 2",
		},
		{
			name: "killed by a signal",
			body: `kill -9 $$`,
			want: "runc create failed: exit status 137",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.body)
			r, cfg := newRuntime(t, f, false)
			err := r.Create(context.Background(), "c1", CreateOpts{Bundle: "/b/c1", PidFile: "/b/c1/init.pid"})
			var rerr *Error
			if !errors.As(err, &rerr) {
				t.Fatalf("Create = %v (%T), want *Error", err, err)
			}
			if rerr.Op != "create" || rerr.Binary != f.bin {
				t.Errorf("Error{Op: %q, Binary: %q}, want create, %q", rerr.Op, rerr.Binary, f.bin)
			}
			if err.Error() != tt.want {
				t.Errorf("Error() = %q, want %q", err.Error(), tt.want)
			}
			checkNoLeftovers(t, cfg)
		})
	}
}

func TestFailureIsClassified(t *testing.T) {
	// The kind travels with the runtime's message through a real call.
	f := newFake(t, `echo '{"level":"error","msg":"container does not exist"}' > "$log"; exit 1`)
	r, _ := newRuntime(t, f, false)
	err := r.Kill(context.Background(), "c1", syscall.SIGKILL, false)
	checkKind(t, err, errdefs.ErrNotFound)
}

func TestContextTimeout(t *testing.T) {
	// exec, so that the kill reaches the sleeping process itself.
	f := newFake(t, "exec sleep 100")
	r, cfg := newRuntime(t, f, false)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()

	done := make(chan error, 1)
	go func() { done <- r.Start(ctx, "c1") }()
	var err error
	select {
	case err = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Start did not return within 5s of its context ending")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start = %v, want an error wrapping context.DeadlineExceeded", err)
	}
	var rerr *Error
	if !errors.As(err, &rerr) || rerr.Op != "start" {
		t.Errorf("Start = %v, want a *Error for start", err)
	}
	checkNoLeftovers(t, cfg)
}

func TestMissingBinary(t *testing.T) {
	for _, bin := range []string{"keel-no-such-runtime", "/nonexistent/keel-runtime"} {
		t.Run(bin, func(t *testing.T) {
			cfg := Config{Binary: bin, Root: "/run/keel-test/ns", LogDir: t.TempDir()}
			r := New(cfg, ExecRunner{})
			err := r.Start(context.Background(), "c1")
			if err == nil || !strings.Contains(err.Error(), bin) {
				t.Fatalf("Start with binary %q = %v, want an error naming it", bin, err)
			}
			var rerr *Error
			if !errors.As(err, &rerr) || rerr.Op != "start" {
				t.Errorf("Start = %v, want a *Error for start", err)
			}
			checkNoLeftovers(t, cfg)
		})
	}
}

func TestMissingLogDir(t *testing.T) {
	f := newFake(t, "exit 0")
	cfg := Config{Binary: f.bin, Root: "/run/keel-test/ns", LogDir: filepath.Join(t.TempDir(), "missing")}
	if err := New(cfg, ExecRunner{}).Start(context.Background(), "c1"); err == nil {
		t.Fatal("Start with a missing LogDir succeeded")
	}
	if _, err := os.Stat(filepath.Join(f.dir, "argv")); err == nil {
		t.Error("the runtime was called although its log could not be made")
	}
}

// TestTempFileContents: Exec and Update hand the runtime their JSON through
// a file, byte for byte, and remove it afterwards.
func TestTempFileContents(t *testing.T) {
	spec := []byte(`{"args":["sh","-c","echo hi"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}`)
	resources := []byte(`{"memory":{"limit":1048576},"cpu":{"shares":512}}`)
	ctx := context.Background()

	f := newFake(t, "exit 0")
	r, cfg := newRuntime(t, f, false)
	if err := r.Exec(ctx, "c1", spec, ExecOpts{PidFile: "/b/c1/e1.pid"}); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(f.dir, "process.json")); err != nil || !bytes.Equal(got, spec) {
		t.Errorf("process file = %q, %v; want %q", got, err, spec)
	}
	if err := r.Update(ctx, "c1", resources); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(f.dir, "resources.json")); err != nil || !bytes.Equal(got, resources) {
		t.Errorf("resources file = %q, %v; want %q", got, err, resources)
	}
	checkNoLeftovers(t, cfg)

	// A failed exec cleans up as well.
	failing := newFake(t, "exit 1")
	r, cfg = newRuntime(t, failing, false)
	if err := r.Exec(ctx, "c1", spec, ExecOpts{PidFile: "/b/c1/e1.pid"}); err == nil {
		t.Fatal("Exec with a failing runtime succeeded")
	}
	checkNoLeftovers(t, cfg)
}

// TestStdioPassedThrough: create and exec give the container the caller's
// stdio instead of capturing it.
func TestStdioPassedThrough(t *testing.T) {
	f := newFake(t, `read line; echo "out:$line"; echo "err:$line" >&2`)
	r, cfg := newRuntime(t, f, false)
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stdin, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	stderr, err := os.Create(filepath.Join(dir, "err"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()

	err = r.Create(context.Background(), "c1", CreateOpts{Bundle: "/b/c1", PidFile: "/b/c1/init.pid",
		Stdio: Stdio{Stdin: stdin, Stdout: stdout, Stderr: stderr}})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"out": "out:hello\n", "err": "err:hello\n"} {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}
	checkNoLeftovers(t, cfg)
}

// TestRuntimeEnvironment: the runtime never sees NOTIFY_SOCKET. Under a
// systemd-managed containerd the shim inherits it, and a runc that sees it
// makes `runc start` wait for the container's READY=1, forever.
func TestRuntimeEnvironment(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("KEEL_TEST_MARKER", "kept")
	f := newFake(t, `env > "`+"$(dirname $0)"+`/env"`)
	r, _ := newRuntime(t, f, false)
	if err := r.Start(context.Background(), "c1"); err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile(filepath.Join(f.dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(env), "NOTIFY_SOCKET") {
		t.Errorf("the runtime was given NOTIFY_SOCKET:\n%s", env)
	}
	if !strings.Contains(string(env), "KEEL_TEST_MARKER=kept") {
		t.Errorf("the runtime lost the rest of the environment:\n%s", env)
	}
}

// TestNullStdioIsDevNull: a process created or exec'd without stdio
// (containerd's null IO) gets /dev/null, never the file the runtime's own
// output is captured in: that file is in the bundle, on a node's tmpfs,
// and the container would fill it.
func TestNullStdioIsDevNull(t *testing.T) {
	f := newFake(t, `fds=$(for fd in 0 1 2; do readlink /proc/$$/fd/$fd; done); echo "$fds" > "$(dirname $0)/fds"`)
	r, cfg := newRuntime(t, f, false)
	ctx := context.Background()
	check := func(op string) {
		t.Helper()
		got, err := os.ReadFile(filepath.Join(f.dir, "fds"))
		if err != nil {
			t.Fatal(err)
		}
		if want := "/dev/null\n/dev/null\n/dev/null\n"; string(got) != want {
			t.Errorf("%s: the process's fds 0-2 are\n%s; want /dev/null for each", op, got)
		}
	}
	if err := r.Create(ctx, "c1", CreateOpts{Bundle: "/b/c1", PidFile: "/b/c1/init.pid"}); err != nil {
		t.Fatal(err)
	}
	check("create")
	if err := r.Exec(ctx, "c1", []byte(`{}`), ExecOpts{PidFile: "/b/c1/e.pid"}); err != nil {
		t.Fatal(err)
	}
	check("exec")
	checkNoLeftovers(t, cfg)
}

// TestFailureOutput: a call that answers on stdout (all but create, exec
// and restore, whose stdio is the process's) reports what the runtime
// printed when it logged nothing.
func TestFailureOutput(t *testing.T) {
	f := newFake(t, `echo 'first line'; echo 'the complaint' >&2; exit 1`)
	r, cfg := newRuntime(t, f, false)
	err := r.Start(context.Background(), "c1")
	if want := "runc start failed: the complaint"; err == nil || err.Error() != want {
		t.Errorf("Start = %v, want %q", err, want)
	}
	checkNoLeftovers(t, cfg)
}
