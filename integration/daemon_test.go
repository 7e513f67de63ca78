//go:build linux

package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keel-shim/keel/integration/imagebuild"
)

// allVersions are the containerd generations every test runs against, in order.
var allVersions = []string{"1.6", "1.7", "2.2", "2.4"}

// forEachVersion runs fn as subtests "1.6", "1.7", "2.2", "2.4", one after the
// other, each with its own private containerd. KEEL_TEST_VERSIONS=2.4,1.6
// narrows the list while developing.
func forEachVersion(t *testing.T, fn func(t *testing.T, d *Daemon)) {
	for _, v := range testVersions() {
		t.Run(v, func(t *testing.T) { fn(t, StartContainerd(t, v)) })
	}
}

// forEachVersionParallel is forEachVersion with the versions' subtests
// running at the same time (and at no other test's), for tests that mostly
// wait, such as those that keep containerd down for half a minute: in
// turn, four versions would take four times that.
func forEachVersionParallel(t *testing.T, fn func(t *testing.T, d *Daemon)) {
	for _, v := range testVersions() {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			fn(t, StartContainerd(t, v))
		})
	}
}

// testVersions is allVersions, or KEEL_TEST_VERSIONS.
func testVersions() []string {
	if v := os.Getenv("KEEL_TEST_VERSIONS"); v != "" {
		return strings.Split(v, ",")
	}
	return allVersions
}

// Daemon is a private containerd: its own root, state, sockets and config in
// a short temp dir, so it never touches the machine's containerd. It runs
// as systemd runs containerd.service: with the config its own
// `containerd config default` prints (CRI included, see config_test.go)
// and with NOTIFY_SOCKET naming a socket the test reads (notify_test.go).
type Daemon struct {
	Version   string
	Dir       string
	Address   string // gRPC socket; the ttrpc one is Address+".ttrpc"
	Namespace string
	Runtime   string
	binDir    string
	logPath   string
	cmd       *exec.Cmd
	exited    chan struct{}
	ids       []string // container IDs handed out, for cleanup
	opts      DaemonOptions
	aliasDir  string // holds "runc" for opts.OCIRuntime
	notify    *notifySocket
	pids      map[int]bool // every containerd process this Daemon started
	// criIDs are the CRI's sandbox and container IDs (namespace k8s.io)
	// and criCgroups the pods' cgroup parents, for cleanup.
	criIDs     []string
	criCgroups []string
}

// binDir returns where the containerd, ctr and runc shim of a version live.
func binDir(version string) (string, error) {
	prefix := pins["KEEL_CONTAINERD_PREFIX"]
	if p := os.Getenv("KEEL_CONTAINERD_PREFIX"); p != "" {
		prefix = p
	}
	switch version {
	case "1.6":
		// Debian 12's containerd package, unpacked by install-deps.sh (never
		// installed: the machine's own containerd is left alone).
		return filepath.Join(prefix, "containerd-debian", "bin"), nil
	case "1.7":
		return filepath.Join(prefix, "containerd-"+pins["KEEL_CONTAINERD_V17"], "bin"), nil
	case "2.2":
		return filepath.Join(prefix, "containerd-"+pins["KEEL_CONTAINERD_V22"], "bin"), nil
	case "2.4":
		return filepath.Join(prefix, "containerd-"+pins["KEEL_CONTAINERD_V24"], "bin"), nil
	}
	return "", fmt.Errorf("unknown containerd version %q (want one of %v)", version, allVersions)
}

// DaemonOptions vary how StartContainerdWith starts containerd.
type DaemonOptions struct {
	// NoUnifiedCgroup runs containerd, and so the shims and OCI runtimes it
	// starts, in a private mount namespace where the cgroup2 mount of a
	// "hybrid" host (/sys/fs/cgroup/unified) is lazily unmounted, so that
	// the runtime sees a pure cgroup v1 host: Debian's crun 1.8 refuses
	// hybrid mode. The machine's own mounts are left alone.
	NoUnifiedCgroup bool
	// OCIRuntime, if set, is a binary that containerd's PATH offers under
	// the name "runc", the shims' default runtime binary: through it every
	// container that names no BinaryName runs on, e.g., crun.
	OCIRuntime string
}

// unifiedCgroupMount is where a hybrid host mounts cgroup2.
const unifiedCgroupMount = "/sys/fs/cgroup/unified"

// ociRuntimeKnob is KEEL_TEST_OCI_RUNTIME: the OCI runtime every test's
// containers run on ("" and "runc" mean runc). With crun, containerd
// runs with NoUnifiedCgroup, and by default only 1.6 is tested: Debian's
// crun 1.8 rejects the OCI spec version containerd 2.x writes ("unknown
// version specified"); KEEL_TEST_VERSIONS overrides that.
func ociRuntimeKnob() string {
	if r := os.Getenv("KEEL_TEST_OCI_RUNTIME"); r != "runc" {
		return r
	}
	return ""
}

// StartContainerd starts a private containerd of the given version with the
// busybox image imported, and stops and cleans it up when t ends.
func StartContainerd(t testing.TB, version string) *Daemon {
	t.Helper()
	var o DaemonOptions
	if rt := ociRuntimeKnob(); rt != "" {
		if rt == "crun" && version != "1.6" && os.Getenv("KEEL_TEST_VERSIONS") == "" {
			t.Skipf("KEEL_TEST_OCI_RUNTIME=crun runs containerd 1.6 only (Debian's crun 1.8 rejects containerd %s's OCI spec version); set KEEL_TEST_VERSIONS to try", version)
		}
		o = DaemonOptions{NoUnifiedCgroup: rt == "crun", OCIRuntime: rt}
	}
	return StartContainerdWith(t, version, o)
}

// StartContainerdWith is StartContainerd with options.
func StartContainerdWith(t testing.TB, version string, o DaemonOptions) *Daemon {
	t.Helper()
	requireSetup(t)
	bin, err := binDir(version)
	if err != nil {
		t.Fatal(err)
	}
	need := []string{"containerd", "ctr"}
	if runtimeName() != defaultRuntime {
		need = append(need, shimBinaryName())
	}
	for _, name := range need {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			skipOrFail(t, "containerd %s is not installed (%v); run scripts/install-deps.sh", version, err)
		}
	}
	// Unix socket paths must stay under 108 bytes: keep the dir short.
	dir, err := os.MkdirTemp("/tmp", "k-")
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{
		Version:   version,
		Dir:       dir,
		Address:   filepath.Join(dir, "c.sock"),
		Namespace: "keeltest",
		Runtime:   runtimeName(),
		binDir:    bin,
		logPath:   filepath.Join(dir, "containerd.log"),
		opts:      o,
		pids:      map[int]bool{},
	}
	if d.notify, err = listenNotify(filepath.Join(dir, "notify.sock")); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	// Registered first, so it runs last, once containerd and every shim
	// are gone.
	t.Cleanup(func() { d.checkNotify(t) })
	if o.NoUnifiedCgroup || o.OCIRuntime != "" {
		// Registered before d.cleanup, so it runs after it.
		t.Cleanup(func() { d.removeCrunState(t) })
	}
	t.Cleanup(func() { d.cleanup(t) })
	cfg := filepath.Join(dir, "config.toml")
	if err := d.writeConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if o.OCIRuntime != "" {
		// A script rather than a symlink: the runtime sees its own name.
		rtPath, err := exec.LookPath(o.OCIRuntime)
		if err != nil {
			skipOrFail(t, "KEEL_TEST_OCI_RUNTIME=%s: %v", o.OCIRuntime, err)
		}
		d.aliasDir = filepath.Join(dir, "oci")
		script := fmt.Sprintf("#!/bin/sh\nexec %s \"$@\"\n", rtPath)
		if err := os.MkdirAll(d.aliasDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d.aliasDir, "runc"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d.launch(t, cfg)
	d.importImage(t)
	return d
}

// launch starts (or restarts) containerd with its config and waits until
// it answers. The log is appended to, so a restart keeps the history.
func (d *Daemon) launch(t testing.TB, cfg string) {
	t.Helper()
	bin, o := d.binDir, d.opts
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command(filepath.Join(bin, "containerd"), "--config", cfg)
	if o.NoUnifiedCgroup {
		// unshare execs sh, which execs containerd: d.cmd's pid stays
		// containerd's. Propagation private: the unmount stays in there.
		d.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
			`if grep -q " `+unifiedCgroupMount+` " /proc/self/mountinfo; then umount -l `+unifiedCgroupMount+` || exit 1; fi; exec "$0" "$@"`,
			filepath.Join(bin, "containerd"), "--config", cfg)
	}
	// As systemd starts a Type=notify unit: containerd says READY=1 on
	// NOTIFY_SOCKET, and passes its environment on to the shims.
	d.cmd.Env = append(environWithout("NOTIFY_SOCKET", "PATH"), "PATH="+d.path(), "NOTIFY_SOCKET="+d.notify.path)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Own process group: a ^C to `go test` must not skip our cleanup.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	mark := d.notify.mark()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.pids[d.cmd.Process.Pid] = true
	d.exited = make(chan struct{})
	cmd, exited := d.cmd, d.exited
	go func() { cmd.Wait(); close(exited) }()
	d.waitReady(t, mark)
}

// environWithout is os.Environ() without the named variables.
func environWithout(names ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, name) {
			env = append(env, kv)
		}
	}
	return env
}

// checkNotify fails the test if anything but containerd wrote to its
// NOTIFY_SOCKET: under systemd that would be taken for containerd's own
// state (a runc given NOTIFY_SOCKET forwards its container's READY=1).
func (d *Daemon) checkNotify(t testing.TB) {
	// The daemon's dir is gone by now; its socket's messages are not.
	for _, m := range d.notify.foreign(d.pids) {
		t.Errorf("containerd %s's NOTIFY_SOCKET got %q from pid %d, which is not containerd (at %s)",
			d.Version, m.Text, m.Pid, m.At.Format(time.RFC3339Nano))
	}
	d.notify.Close()
}

// Restart stops containerd (SIGKILL when kill, else SIGTERM), keeps it
// away for downFor, and starts it again on the same root and state, as a
// chaos test does; the shims and containers keep running meanwhile.
func (d *Daemon) Restart(t testing.TB, kill bool, downFor time.Duration) {
	t.Helper()
	if kill {
		d.cmd.Process.Kill()
		<-d.exited
	} else {
		d.stop(t)
	}
	time.Sleep(downFor)
	d.launch(t, filepath.Join(d.Dir, "config.toml"))
}

// removeCrunState deletes what crun kept of containers whose shim died
// (the cleanup's `runc delete` cannot read crun's state), then the
// cgroups their deletion freed.
func (d *Daemon) removeCrunState(t testing.TB) {
	root := filepath.Join("/run/containerd/runc", d.Namespace)
	for _, id := range d.ids {
		if _, err := os.Stat(filepath.Join(root, id)); err != nil {
			continue
		}
		out, err := exec.Command("crun", "--root", root, "delete", "--force", id).CombinedOutput()
		t.Logf("cleanup: crun delete --force %s: %v %s", id, err, out)
		os.RemoveAll(filepath.Join(root, id))
	}
	d.removeCgroups()
}

// path puts the Keel shim first, then this version's own binaries (its runc
// shim must win over Debian's 1.6 one in /usr/bin), then the usual PATH.
func (d *Daemon) path() string {
	dirs := []string{d.binDir, os.Getenv("PATH")}
	if shimDir != "" {
		dirs = append([]string{shimDir}, dirs...)
	}
	if d.aliasDir != "" {
		dirs = append([]string{d.aliasDir}, dirs...)
	}
	return strings.Join(dirs, ":")
}

var serverVersionRE = regexp.MustCompile(`(?s)Server:.*?Version:\s+(\S+)`)

// waitReady waits until containerd has said READY=1 on its NOTIFY_SOCKET
// (after the first mark messages) and answers `ctr version`, as the
// version under test.
func (d *Daemon) waitReady(t testing.TB, mark int) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	pid := d.cmd.Process.Pid
	for {
		ready, next := d.notify.readySince(mark, pid)
		if ready {
			break
		}
		select {
		case <-d.exited:
			t.Fatalf("containerd %s exited during start-up", d.Version)
		case <-next:
		case <-time.After(time.Until(deadline)):
			t.Fatalf("containerd %s (pid %d) sent no READY=1 to NOTIFY_SOCKET within 30s", d.Version, pid)
		}
	}
	notified := time.Since(start)
	for {
		select {
		case <-d.exited:
			t.Fatalf("containerd %s exited during start-up", d.Version)
		default:
		}
		out, err := d.ctrQuiet(5*time.Second, "version")
		if err == nil {
			m := serverVersionRE.FindStringSubmatch(out)
			if m == nil || !strings.HasPrefix(strings.TrimPrefix(m[1], "v"), d.Version+".") {
				t.Fatalf("expected a containerd %s.x server, ctr version says:\n%s", d.Version, out)
			}
			t.Logf("containerd %s ready at %s (READY=1 after %v; log %s)", m[1], d.Address, notified.Round(time.Millisecond), d.logPath)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd %s said READY=1 but did not answer `ctr version` within 30s: %v", d.Version, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *Daemon) importImage(t testing.TB) {
	t.Helper()
	if _, err := d.Ctr(t, "images", "import", imageTar); err != nil {
		t.Fatal(err)
	}
	out, err := d.Ctr(t, "images", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, imagebuild.Ref) {
		t.Fatalf("image %s missing after import; images:\n%s", imagebuild.Ref, out)
	}
}

// CtrError is a failed ctr command, with what it printed on stderr.
type CtrError struct {
	Args     []string
	ExitCode int
	Stderr   string
}

func (e *CtrError) Error() string {
	return fmt.Sprintf("ctr %s: exit code %d: %s", strings.Join(e.Args, " "), e.ExitCode, strings.TrimSpace(e.Stderr))
}

// exitCode is ctr's exit status, or -1 when ctr did not fail with one.
func exitCode(err error) int {
	var ce *CtrError
	if errors.As(err, &ce) {
		return ce.ExitCode
	}
	return -1
}

// CtrCmd is ctr of the daemon's own version talking to it, unstarted.
func (d *Daemon) CtrCmd(ctx context.Context, args ...string) *exec.Cmd {
	return d.ctrCmdNS(ctx, d.Namespace, args...)
}

// ctrCmdNS is CtrCmd in another namespace, such as the CRI's "k8s.io".
func (d *Daemon) ctrCmdNS(ctx context.Context, ns string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, filepath.Join(d.binDir, "ctr"),
		append([]string{"-a", d.Address, "-n", ns}, args...)...)
}

// Ctr runs ctr and returns its stdout; a failure is a *CtrError.
func (d *Daemon) Ctr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := d.ctrQuiet(2*time.Minute, args...)
	t.Logf("ctr %s -> err=%v\n%s", strings.Join(args, " "), err, out)
	return out, err
}

func (d *Daemon) ctrQuiet(timeout time.Duration, args ...string) (string, error) {
	return d.ctrQuietNS(timeout, d.Namespace, args...)
}

func (d *Daemon) ctrQuietNS(timeout time.Duration, ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := d.ctrCmdNS(ctx, ns, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		ce := &CtrError{Args: args, ExitCode: -1, Stderr: stderr.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ce.ExitCode = ee.ExitCode()
		}
		if ctx.Err() != nil {
			ce.Stderr += "\n(ctr timed out after " + timeout.String() + ")"
		}
		return stdout.String(), ce
	}
	return stdout.String(), nil
}

// NewID returns a container ID unique on this machine: runc state under
// /run/containerd/runc and shim sockets under /run/containerd/s are shared
// by every containerd here.
func (d *Daemon) NewID(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	id := prefix + "-" + hex.EncodeToString(b)
	d.ids = append(d.ids, id)
	return id
}

// Task is one line of `ctr task ls`.
type Task struct {
	Pid    int
	Status string
}

// Tasks parses `ctr task ls`; its columns are the same in 1.6 and 2.x.
func (d *Daemon) Tasks(t testing.TB) map[string]Task {
	t.Helper()
	out, err := d.ctrQuiet(time.Minute, "task", "ls")
	if err != nil {
		t.Fatal(err)
	}
	tasks := map[string]Task{}
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil {
			t.Fatalf("bad pid in `ctr task ls` line %q", line)
		}
		tasks[f[0]] = Task{Pid: pid, Status: f[2]}
	}
	return tasks
}

// WaitStatus polls `ctr task ls` until task id has the given status.
func (d *Daemon) WaitStatus(t testing.TB, id, status string) Task {
	t.Helper()
	var last Task
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if task, ok := d.Tasks(t)[id]; ok {
			if last = task; task.Status == status {
				return task
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("task %s never became %s within 15s; last seen %+v", id, status, last)
	return last
}

// BundleDir is where containerd keeps a task's bundle (config.json, and the
// shim's address or bootstrap.json).
func (d *Daemon) BundleDir(id string) string {
	return filepath.Join(d.Dir, "state", "io.containerd.runtime.v2.task", d.Namespace, id)
}

// rmExitRE matches what `ctr task rm` logs for a task that exited non-zero,
// the same in 1.6, 2.2 and 2.4: "task ID exit with non-zero exit code 137".
var rmExitRE = regexp.MustCompile(`exit with non-zero exit code (\d+)`)

// TaskRm deletes a stopped task and returns the exit status that the shim's
// Delete reported. ctr has no `task wait`; `task rm` logs a non-zero status
// on stderr and says nothing for 0. (`task attach` exits with the status too,
// but deletes the task itself.)
func (d *Daemon) TaskRm(t testing.TB, id string) int {
	t.Helper()
	out, err := d.CtrCmd(t.Context(), "task", "rm", id).CombinedOutput()
	t.Logf("ctr task rm %s -> err=%v\n%s", id, err, out)
	if err != nil {
		t.Fatalf("ctr task rm %s: %v\n%s", id, err, out)
	}
	m := rmExitRE.FindSubmatch(out)
	if m == nil {
		return 0
	}
	code, _ := strconv.Atoi(string(m[1]))
	return code
}
