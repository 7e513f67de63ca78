//go:build linux

// Package runtime drives an OCI runtime binary (runc, crun, or a compatible
// one). It knows the command lines and how each runtime reports failure;
// everything above it sees Go calls and errdefs-classified errors.
package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultBinary is used when the runtime options name none.
const DefaultBinary = "runc"

// Runner runs a command to completion and returns its exit status. The shim
// passes its reaper: as child subreaper it owns every wait, so os/exec must
// never wait for the runtime binary itself.
type Runner interface {
	Run(ctx context.Context, cmd *exec.Cmd) (status int, err error)
}

// Config selects and configures the runtime binary.
type Config struct {
	Binary        string // name or path; DefaultBinary if empty
	Root          string // the runtime's state directory (--root)
	SystemdCgroup bool
	CriuPath      string // the criu binary, if not the runtime's default (--criu)
	// Timeout bounds a call whose context has no deadline; 0 is callTimeout.
	Timeout time.Duration `json:",omitempty"`
	// LogDir holds the runtime's per-call JSON logs (the bundle).
	LogDir string
}

// Runtime is one OCI runtime binary, configured for one container.
type Runtime struct {
	cfg Config
	run Runner
}

// New returns a driver for cfg.Binary. It does not check that the binary
// exists: the first call reports that, in the runtime's own words.
func New(cfg Config, r Runner) *Runtime {
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	return &Runtime{cfg: cfg, run: r}
}

// Binary is the runtime binary this driver calls.
func (r *Runtime) Binary() string { return r.cfg.Binary }

// Stdio is what the runtime hands to the container process; nil is /dev/null.
type Stdio struct {
	Stdin, Stdout, Stderr *os.File
}

// CreateOpts are the options of `create`.
type CreateOpts struct {
	Bundle        string
	PidFile       string
	ConsoleSocket string
	NoPivot       bool
	NoNewKeyring  bool
	Stdio
}

// Create creates the container; its init process waits for Start.
func (r *Runtime) Create(ctx context.Context, id string, o CreateOpts) error {
	args := []string{"create", "--bundle", o.Bundle, "--pid-file", o.PidFile}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	if o.NoPivot {
		args = append(args, "--no-pivot")
	}
	if o.NoNewKeyring {
		args = append(args, "--no-new-keyring")
	}
	_, err := r.call(ctx, &o.Stdio, append(args, id)...)
	return err
}

// Start starts the init process of a created container.
func (r *Runtime) Start(ctx context.Context, id string) error {
	_, err := r.call(ctx, nil, "start", id)
	return err
}

// ExecOpts are the options of `exec`.
type ExecOpts struct {
	PidFile       string
	ConsoleSocket string
	Stdio
}

// Exec starts an additional process, described by the OCI process JSON in
// spec, in the container, and returns once it runs (detached).
func (r *Runtime) Exec(ctx context.Context, id string, spec []byte, o ExecOpts) error {
	f, err := os.CreateTemp(r.cfg.LogDir, ".exec-process-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(spec)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	args := []string{"exec", "--detach", "--process", f.Name(), "--pid-file", o.PidFile}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	_, err = r.call(ctx, &o.Stdio, append(args, id)...)
	return err
}

// Kill sends sig to the init process, or with all to every process of the
// container.
func (r *Runtime) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	args := []string{"kill"}
	if all {
		args = append(args, "--all")
	}
	_, err := r.call(ctx, nil, append(args, id, strconv.Itoa(int(sig)))...)
	return err
}

// Pause freezes every process of the container.
func (r *Runtime) Pause(ctx context.Context, id string) error {
	_, err := r.call(ctx, nil, "pause", id)
	return err
}

// Resume thaws a paused container.
func (r *Runtime) Resume(ctx context.Context, id string) error {
	_, err := r.call(ctx, nil, "resume", id)
	return err
}

// Delete removes the container's runtime state; force kills it first.
func (r *Runtime) Delete(ctx context.Context, id string, force bool) error {
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	_, err := r.call(ctx, nil, append(args, id)...)
	return err
}

// Ps lists the pids of the container's processes.
func (r *Runtime) Ps(ctx context.Context, id string) ([]int, error) {
	out, err := r.call(ctx, nil, "ps", "--format", "json", id)
	if err != nil {
		return nil, err
	}
	var pids []int
	if err := json.Unmarshal(out, &pids); err != nil {
		return nil, fmt.Errorf("%s ps: bad output %q: %w", r.cfg.Binary, out, err)
	}
	return pids, nil
}

// State is the part of `state` the shim uses.
type State struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Status string `json:"status"`
}

// State reports the container's status as the runtime sees it.
func (r *Runtime) State(ctx context.Context, id string) (*State, error) {
	out, err := r.call(ctx, nil, "state", id)
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, fmt.Errorf("%s state: bad output %q: %w", r.cfg.Binary, out, err)
	}
	return &s, nil
}

// Update applies new resources, the OCI LinuxResources JSON, to the container.
func (r *Runtime) Update(ctx context.Context, id string, resources []byte) error {
	in, err := os.CreateTemp(r.cfg.LogDir, ".resources-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(in.Name())
	defer in.Close()
	if _, err := in.Write(resources); err != nil {
		return err
	}
	_, err = r.call(ctx, nil, "update", "--resources", in.Name(), id)
	return err
}

// callTimeout bounds a runtime call whose context has no deadline of its
// own: a wedged runtime must not hold back, say, a container's exit for
// ever. Generous, since create runs the container's hooks.
const callTimeout = 2 * time.Minute

// call runs the runtime with the global flags and turns a failure into an
// error carrying the runtime's own last error message.
//
// A call that makes a process (create, exec, restore) passes its stdio:
// the runtime hands it on, and a stream left nil is /dev/null, as with
// containerd's null IO. Every other call (stdio nil) answers on stdout,
// which is captured through a file so that no copying goroutine outlives
// the call; a runtime that dies before it logs leaves its complaint there.
func (r *Runtime) call(ctx context.Context, stdio *Stdio, args ...string) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		timeout := r.cfg.Timeout
		if timeout <= 0 {
			timeout = callTimeout
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	logFile, err := os.CreateTemp(r.cfg.LogDir, ".runtime-*.log")
	if err != nil {
		return nil, fmt.Errorf("runtime log: %w", err)
	}
	logPath := logFile.Name()
	logFile.Close()
	defer os.Remove(logPath)

	global := []string{"--root", r.cfg.Root, "--log", logPath, "--log-format", "json"}
	if r.cfg.SystemdCgroup {
		global = append(global, "--systemd-cgroup")
	}
	if r.cfg.CriuPath != "" {
		global = append(global, "--criu", r.cfg.CriuPath)
	}
	cmd := exec.Command(r.cfg.Binary, append(global, args...)...)
	cmd.Env = runtimeEnv()
	var out *os.File
	if stdio == nil {
		if out, err = os.CreateTemp(r.cfg.LogDir, ".runtime-out-*"); err != nil {
			return nil, err
		}
		defer os.Remove(out.Name())
		defer out.Close()
		cmd.Stdout, cmd.Stderr = out, out
	} else {
		null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		defer null.Close()
		// Assign only real files: a nil *os.File in an io.Writer is not nil.
		cmd.Stdin, cmd.Stdout, cmd.Stderr = orNull(stdio.Stdin, null), orNull(stdio.Stdout, null), orNull(stdio.Stderr, null)
	}
	start := time.Now()
	status, err := r.run.Run(ctx, cmd)
	if err != nil && status == -1 {
		return nil, &Error{Op: args[0], Binary: r.cfg.Binary, Msg: err.Error(), cause: err}
	}
	var stdout []byte
	if out != nil {
		stdout, _ = os.ReadFile(out.Name())
	}
	if err != nil || status != 0 {
		msg := lastError(logPath)
		if msg == "" {
			msg = trimOutput(stdout)
		}
		if msg == "" {
			msg = fmt.Sprintf("exit status %d", status)
		}
		if err != nil {
			msg = fmt.Sprintf("%s (after %s: %v)", msg, time.Since(start).Round(time.Millisecond), err)
		}
		return nil, &Error{Op: args[0], Binary: r.cfg.Binary, Msg: msg, cause: err}
	}
	return stdout, nil
}

func orNull(f, null *os.File) *os.File {
	if f != nil {
		return f
	}
	return null
}

// runtimeEnv is the shim's environment less NOTIFY_SOCKET. containerd run
// by systemd (Type=notify) passes that on to its shims; a runc that sees
// it sets up sd-notify for the container, and `runc start` then waits for
// a READY=1 that an ordinary workload never sends.
func runtimeEnv() []string {
	env := os.Environ()
	kept := env[:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			kept = append(kept, kv)
		}
	}
	return kept
}

// Features returns the runtime's `features` JSON (OCI runtime features),
// or nil if the runtime has no such command (crun 1.8 has not).
func (r *Runtime) Features(ctx context.Context) ([]byte, error) {
	out, err := r.call(ctx, nil, "features")
	if err != nil {
		return nil, err
	}
	if !json.Valid(out) {
		return nil, fmt.Errorf("%s features: not JSON: %q", r.cfg.Binary, out)
	}
	return out, nil
}

// CheckpointOpts are the options of `checkpoint` (CRIU).
type CheckpointOpts struct {
	ImagePath, WorkPath string
	LeaveRunning        bool
	AllowOpenTCP        bool
	AllowExternalUnix   bool
	AllowTerminal       bool
	FileLocks           bool
	EmptyNamespaces     []string
	CgroupsMode         string
}

// Checkpoint dumps the container with CRIU into o.ImagePath.
func (r *Runtime) Checkpoint(ctx context.Context, id string, o CheckpointOpts) error {
	args := []string{"checkpoint", "--image-path", o.ImagePath}
	if o.WorkPath != "" {
		args = append(args, "--work-path", o.WorkPath)
	}
	args = append(args, criuFlags(o)...)
	if o.LeaveRunning {
		args = append(args, "--leave-running")
	}
	_, err := r.call(ctx, nil, append(args, id)...)
	return err
}

// RestoreOpts are the options of `restore`.
type RestoreOpts struct {
	CheckpointOpts
	CreateOpts
}

// Restore recreates a checkpointed container from o.ImagePath, detached.
func (r *Runtime) Restore(ctx context.Context, id string, o RestoreOpts) error {
	args := []string{"restore", "--detach", "--bundle", o.Bundle, "--pid-file", o.PidFile, "--image-path", o.ImagePath}
	if o.WorkPath != "" {
		args = append(args, "--work-path", o.WorkPath)
	}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	if o.NoPivot {
		args = append(args, "--no-pivot")
	}
	args = append(args, criuFlags(o.CheckpointOpts)...)
	_, err := r.call(ctx, &o.Stdio, append(args, id)...)
	return err
}

// criuFlags are the CRIU options checkpoint and restore share.
func criuFlags(o CheckpointOpts) []string {
	var args []string
	for _, f := range []struct {
		on   bool
		flag string
	}{
		{o.AllowOpenTCP, "--tcp-established"},
		{o.AllowExternalUnix, "--ext-unix-sk"},
		{o.AllowTerminal, "--shell-job"},
		{o.FileLocks, "--file-locks"},
	} {
		if f.on {
			args = append(args, f.flag)
		}
	}
	for _, ns := range o.EmptyNamespaces {
		args = append(args, "--empty-ns", ns)
	}
	if o.CgroupsMode != "" {
		args = append(args, "--manage-cgroups-mode", o.CgroupsMode)
	}
	return args
}
