//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// isKeel tells whether the tests run against Keel rather than the reference
// shim (KEEL_TEST_RUNTIME=io.containerd.runc.v2).
func isKeel(d *Daemon) bool { return d.Runtime == defaultRuntime }

// pollUntil calls cond every 20ms until it holds or timeout passes.
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer that the containerd client's copy goroutines
// may write while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// attachSession is a `ctr task attach` running in the background whose
// stdout lines "tick N" are collected as the numbers N.
type attachSession struct {
	cmd    *exec.Cmd
	stderr syncBuffer
	done   chan struct{}
	once   sync.Once

	mu   sync.Mutex
	vals []int
	bad  []string
}

func startAttach(t *testing.T, d *Daemon, id string) *attachSession {
	t.Helper()
	s := &attachSession{cmd: d.CtrCmd(context.Background(), "task", "attach", id), done: make(chan struct{})}
	// No stdin: ctr copies /dev/null into the stdin FIFO and closes it.
	s.cmd.Stderr = &s.stderr
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			n, err := strconv.Atoi(strings.TrimPrefix(line, "tick "))
			s.mu.Lock()
			if err != nil || !strings.HasPrefix(line, "tick ") {
				s.bad = append(s.bad, line)
			} else {
				s.vals = append(s.vals, n)
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.kill)
	return s
}

func (s *attachSession) values() ([]int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.vals...), append([]string(nil), s.bad...)
}

// kill ends ctr with SIGKILL: ctr forwards every catchable signal to the
// task, so SIGTERM would stop the container instead of the client.
func (s *attachSession) kill() {
	s.once.Do(func() {
		s.cmd.Process.Kill()
		<-s.done
		s.cmd.Wait()
	})
}

// waitValues polls until the session has read at least n counter lines.
func (s *attachSession) waitValues(t *testing.T, n int) []int {
	t.Helper()
	ok := pollUntil(15*time.Second, func() bool {
		v, _ := s.values()
		return len(v) >= n
	})
	v, bad := s.values()
	if !ok {
		t.Fatalf("ctr task attach read %d counter lines within 15s, want %d; values %v, other lines %q, stderr %q",
			len(v), n, v, bad, s.stderr.String())
	}
	return v
}

// checkConsecutive fails unless vals count up by one: no line lost or
// repeated while one reader was attached.
func checkConsecutive(t *testing.T, what string, vals []int, bad []string) {
	t.Helper()
	if len(bad) > 0 {
		t.Errorf("%s: lines that are not whole counter lines: %q", what, bad)
	}
	for i := 1; i < len(vals); i++ {
		if vals[i] != vals[i-1]+1 {
			t.Errorf("%s: counter jumps from %d to %d (values %v)", what, vals[i-1], vals[i], vals)
			return
		}
	}
}

// TestAttachReattach detaches a container whose output goes to FIFOs, reads
// it with `ctr task attach`, kills that client, and attaches again: the
// second client must get the new output, the FIFOs surviving their reader.
func TestAttachReattach(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("attach")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id,
			"sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done"); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, id, "RUNNING")

		first := startAttach(t, d, id)
		first.waitValues(t, 5)
		first.kill()
		vals1, bad1 := first.values()
		checkConsecutive(t, "first attach", vals1, bad1)
		last := vals1[len(vals1)-1]
		t.Logf("first attach read %v", vals1)

		// The container kept running without a reader; the FIFO holds
		// what it wrote meanwhile, and it goes on writing.
		second := startAttach(t, d, id)
		vals2 := second.waitValues(t, 5)
		if vals2[0] <= last {
			t.Fatalf("second attach starts at tick %d, but the first already saw tick %d: old output repeated (%v)", vals2[0], last, vals2)
		}
		// Ticks beyond what the FIFO held when it attached: live output.
		want := vals2[len(vals2)-1] + 3
		if !pollUntil(15*time.Second, func() bool { v, _ := second.values(); return v[len(v)-1] >= want }) {
			v, _ := second.values()
			t.Fatalf("second attach stopped receiving: last tick %d, want %d", v[len(v)-1], want)
		}
		second.kill()
		vals2, bad2 := second.values()
		checkConsecutive(t, "second attach", vals2, bad2)
		t.Logf("second attach read %v", vals2)
		if st := d.Tasks(t)[id].Status; st != "RUNNING" {
			t.Fatalf("task %s is %q after its clients went away, want RUNNING", id, st)
		}

		d.KillAndRemove(t, id)
		if _, err := d.Ctr(t, "containers", "rm", id); err != nil {
			t.Fatal(err)
		}
	})
}

// waitOutput polls until buf holds exactly want. The client copies the
// output while the test runs, and must be given the time: the containerd
// 2.x client's Delete cancels that copy (cio.Cancel closes the FIFOs)
// rather than waiting for its end, so it cannot serve as the wait.
func waitOutput(buf *syncBuffer, want string) bool {
	return pollUntil(10*time.Second, func() bool { return buf.String() == want })
}

// waitExit waits for an exit status from ch.
func waitExit(t *testing.T, what string, ch <-chan containerd.ExitStatus) uint32 {
	t.Helper()
	select {
	case st := <-ch:
		code, _, err := st.Result()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return code
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not exit within 15s", what)
		return 0
	}
}

// gatedCat is a process that answers one line, then waits for the file
// gate before it reads the rest of its stdin with cat. Until then whatever
// the client writes stays in the stdin FIFO and pipe, in the shim's care.
func gatedCat(prefix, gate string) []string {
	return []string{"sh", "-c", fmt.Sprintf(`read line; echo "%s:$line"; until [ -e %s ]; do sleep 0.02; done; exec cat`, prefix, gate)}
}

// stdinPayload is more than the process's stdin pipe holds (64 KiB), so
// that part of it is still in the shim's hands (its copier, the FIFO) when
// CloseIO comes; and less than the pipe, the copier and the FIFO hold
// together, so that the client can write all of it while the process reads
// nothing.
var stdinPayload = strings.Repeat("0123456789abcdef", 100000/16)

// closeStdin writes stdinPayload to the process's stdin while the process
// is not reading, closes the client's end, calls CloseIO, and only then
// lets the process read (exec touches gate): containerd's own order (its
// TestContainerCloseIO, ctr, CRI) of close and CloseIO, at a moment when
// the shim still holds data. The process must get all of it, then EOF.
func closeStdin(t *testing.T, ctx context.Context, task containerd.Task, w *io.PipeWriter, closeIO func() error, gate string) {
	t.Helper()
	written := make(chan error, 1)
	go func() {
		_, err := w.Write([]byte(stdinPayload))
		w.Close() // the client's copy then closes its end of the FIFO
		written <- err
	}()
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("could not write %d bytes to a stdin that is not read within 15s", len(stdinPayload))
	}
	if err := closeIO(); err != nil {
		t.Fatalf("CloseIO: %v", err)
	}
	runExec(t, ctx, task, "touch "+gate, "touch", gate)
}

// runExec runs a short exec without stdio and checks that it succeeds.
func runExec(t *testing.T, ctx context.Context, task containerd.Task, name string, args ...string) {
	t.Helper()
	spec, err := task.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pspec := *spec.Process
	pspec.Args = args
	pspec.Terminal = false
	execID := fmt.Sprintf("x%d", time.Now().UnixNano())
	proc, err := task.Exec(ctx, execID, &pspec, cio.NullIO)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	exitC, err := proc.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Start(ctx); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if code := waitExit(t, name, exitC); code != 0 {
		t.Fatalf("%s: exit status %d", name, code)
	}
	if _, err := proc.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCloseIO checks CloseIO on the init and on an exec process, through the
// Go client. Each process has a stdin of its own whose client end stays
// open (an io.Pipe) until the test closes it: the process answers a line,
// then gets its payload and EOF through close + CloseIO, losing nothing
// that was still on its way. Closing the exec's stdin leaves the init's
// alone.
func TestCloseIO(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		c, ctx := d.Client(t)
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		id := d.NewID("closeio")
		cont := newClientContainer(t, d, c, ctx, id, nil, 0, oci.WithProcessArgs(gatedCat("init", "/tmp/go-init")...))

		inR, inW := io.Pipe()
		defer inW.Close()
		var out, errb syncBuffer
		task, err := cont.NewTask(ctx, cio.NewCreator(cio.WithStreams(inR, &out, &errb)))
		if err != nil {
			t.Fatal(err)
		}
		initExit, err := task.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := inW.Write([]byte("hi\n")); err != nil {
			t.Fatal(err)
		}
		if !pollUntil(15*time.Second, func() bool { return out.String() == "init:hi\n" }) {
			t.Fatalf("init answered %q within 15s, want %q (stderr %q)", out.String(), "init:hi\n", errb.String())
		}

		// An exec with a stdin of its own.
		spec, err := cont.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pspec := *spec.Process
		pspec.Args = gatedCat("exec", "/tmp/go-exec")
		exR, exW := io.Pipe()
		defer exW.Close()
		var exOut, exErr syncBuffer
		proc, err := task.Exec(ctx, "cat1", &pspec, cio.NewCreator(cio.WithStreams(exR, &exOut, &exErr)))
		if err != nil {
			t.Fatal(err)
		}
		execExit, err := proc.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := proc.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := exW.Write([]byte("exec-hi\n")); err != nil {
			t.Fatal(err)
		}
		if !pollUntil(15*time.Second, func() bool { return exOut.String() == "exec:exec-hi\n" }) {
			t.Fatalf("exec answered %q within 15s, want %q (stderr %q)", exOut.String(), "exec:exec-hi\n", exErr.String())
		}
		closeStdin(t, ctx, task, exW, func() error { return proc.CloseIO(ctx, containerd.WithStdinCloser) }, "/tmp/go-exec")
		code := waitExit(t, "exec after CloseIO", execExit)
		if want := "exec:exec-hi\n" + stdinPayload; code != 0 || !waitOutput(&exOut, want) {
			t.Fatalf("exec: exit status %d, %d bytes of stdout; want 0 and %d bytes (its stdin lost %d bytes)",
				code, len(exOut.String()), len(want), len(want)-len(exOut.String()))
		}
		if _, err := proc.Delete(ctx); err != nil {
			t.Fatal(err)
		}

		// The init still runs with its stdin open, and saw nothing of the exec's.
		if st, err := task.Status(ctx); err != nil || st.Status != containerd.Running {
			t.Fatalf("init status after the exec's CloseIO: %+v, %v; want running", st, err)
		}
		closeStdin(t, ctx, task, inW, func() error { return task.CloseIO(ctx, containerd.WithStdinCloser) }, "/tmp/go-init")
		code = waitExit(t, "init after CloseIO", initExit)
		if want := "init:hi\n" + stdinPayload; code != 0 || !waitOutput(&out, want) {
			t.Fatalf("init: exit status %d, %d bytes of stdout; want 0 and %d bytes (its stdin lost %d bytes)",
				code, len(out.String()), len(want), len(want)-len(out.String()))
		}
		if _, err := task.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if errb.String() != "" || exErr.String() != "" {
			t.Fatalf("stderr of init %q, of exec %q; want none", errb.String(), exErr.String())
		}
	})
}

// TestAttachStdin checks that a detached container's stdin outlives its
// clients: `ctr run -d` a shell that reads commands from stdin, let ctr
// exit, then attach twice and talk to the same shell. As with
// containerd-shim-runc-v2, only CloseIO ends a process's stdin; a client
// that goes away does not.
func TestAttachStdin(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("attachin")
		// ctr gets a stdin that never ends, so it never calls CloseIO.
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		run := d.CtrCmd(context.Background(), "run", "-d", "--runtime", d.Runtime, imageRef, id, "sh")
		run.Stdin = r
		out, err := run.CombinedOutput()
		r.Close()
		if err != nil {
			t.Fatalf("ctr run -d: %v\n%s", err, out)
		}

		for i, n := range []int{6, 7} {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			attach := d.CtrCmd(ctx, "task", "attach", id)
			stdin, err := attach.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stdout, stderr syncBuffer
			attach.Stdout, attach.Stderr = &stdout, &stderr
			if err := attach.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { attach.Wait(); close(exited) }()
			fmt.Fprintf(stdin, "echo answer-$((%d*7))\n", n)
			want := fmt.Sprintf("answer-%d\n", n*7)
			ok := pollUntil(10*time.Second, func() bool {
				select {
				case <-exited: // the task has ended
					return true
				default:
				}
				return strings.Contains(stdout.String(), want)
			})
			attach.Process.Kill() // SIGKILL: ctr forwards other signals to the task
			<-exited
			if !ok || !strings.Contains(stdout.String(), want) {
				t.Fatalf("attach %d: the shell did not answer %q (ctr attach stdout %q, stderr %q, exit %v; task %+v): was its stdin closed when an earlier client went away?",
					i+1, want, stdout.String(), stderr.String(), attach.ProcessState, d.Tasks(t)[id])
			}
		}
		if st := d.Tasks(t)[id].Status; st != "RUNNING" {
			t.Fatalf("task %s is %q after its clients went away, want RUNNING", id, st)
		}
		d.KillAndRemove(t, id)
		if _, err := d.Ctr(t, "containers", "rm", id); err != nil {
			t.Fatal(err)
		}
	})
}

// ctrLogRE matches a log line of ctr itself on its stderr, such as ctr 2.x's
// warning that cgroup v1 is deprecated.
var ctrLogRE = regexp.MustCompile(`(?m)^time="[^"]*" level=\w+ msg=.*\n`)

// withoutCtrLog returns what ctr wrote on stderr minus its own log lines:
// what the process wrote.
func withoutCtrLog(stderr []byte) []byte {
	return ctrLogRE.ReplaceAll(stderr, nil)
}

// TestExecStdio runs exec processes with FIFOs of their own while the init
// keeps writing to a log file: no exec output may be cut short, and no
// stream may leak into another.
func TestExecStdio(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("execio")
		initLog := filepath.Join(t.TempDir(), "init.log")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, "--log-uri", "file://"+initLog, imageRef, id,
			"sh", "-c", "while :; do echo init-line; sleep 0.01; done"); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, id, "RUNNING")
		size := func() int64 {
			fi, err := os.Stat(initLog)
			if err != nil {
				return 0
			}
			return fi.Size()
		}
		if !pollUntil(10*time.Second, func() bool { return size() > 0 }) {
			t.Fatalf("init wrote nothing to %s within 10s", initLog)
		}
		before := size()

		// Each exec writes 300000 bytes (more than a pipe or FIFO holds)
		// and exits at once; four run at a time.
		const n, want = 20, 300000
		type result struct {
			out, stderr []byte
			err         error
		}
		results := make([]result, n)
		jobs := make(chan int)
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range jobs {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					cmd := d.CtrCmd(ctx, "task", "exec", "--exec-id", fmt.Sprintf("e%d", i), id,
						"sh", "-c", fmt.Sprintf(`head -c %d /dev/zero | busybox tr '\0' x`, want))
					var out, stderr bytes.Buffer
					cmd.Stdout, cmd.Stderr = &out, &stderr
					err := cmd.Run()
					cancel()
					results[i] = result{out.Bytes(), withoutCtrLog(stderr.Bytes()), err}
				}
			}()
		}
		start := time.Now()
		for i := 0; i < n; i++ {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		t.Logf("%d execs of %d bytes each took %v", n, want, time.Since(start))
		for i, r := range results {
			if r.err != nil || len(r.stderr) != 0 {
				t.Errorf("exec e%d: %v, stderr %q", i, r.err, r.stderr)
			}
			if len(r.out) != want || bytes.Count(r.out, []byte("x")) != want {
				t.Errorf("exec e%d: got %d bytes (%d of them 'x'), want %d 'x'", i, len(r.out), bytes.Count(r.out, []byte("x")), want)
			}
		}

		// An exec that writes to stderr only.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := d.CtrCmd(ctx, "task", "exec", "--exec-id", "stderr-only", id,
			"sh", "-c", `echo to-stderr >&2; head -c 100000 /dev/zero | busybox tr '\0' y >&2`)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("stderr-only exec: %v, stderr %.200q", err, stderr.String())
		}
		wantErr := "to-stderr\n" + strings.Repeat("y", 100000)
		if gotErr := string(withoutCtrLog(stderr.Bytes())); out.Len() != 0 || gotErr != wantErr {
			t.Fatalf("stderr-only exec: stdout %.100q (%d bytes), stderr %d bytes starting %.40q; want no stdout and %d bytes of stderr",
				out.String(), out.Len(), len(gotErr), gotErr, len(wantErr))
		}

		// The init went on writing throughout, and only its own lines.
		if !pollUntil(10*time.Second, func() bool { return size() > before }) {
			t.Fatalf("init's log did not grow while the execs ran")
		}
		d.KillAndRemove(t, id)
		if _, err := d.Ctr(t, "containers", "rm", id); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(initLog)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		for i, l := range lines {
			if l != "init-line" {
				t.Fatalf("init log line %d is %.80q, want only init-line (%d lines)", i+1, l, len(lines))
			}
		}
		t.Logf("init wrote %d lines meanwhile", len(lines))
	})
}

// TestIoUID checks that IoUid/IoGid (runc options, as WithRuntime passes
// them) make the container's stdio pipes belong to that host user.
//
// The container runs in a user namespace whose root is host uid and gid
// 200000. Only the owner of a pipe, or a capability over its owner, may
// re-open it through /proc/self/fd/1: with IoUid/IoGid 200000 the pipes
// belong to the container's root and the re-open works, in the init and in
// an exec; without, they belong to host root, which the container cannot
// even name (it sees the overflow id 65534), and the re-open is refused.
//
// A user namespace is needed to see the option at work: for a plain
// non-root user runc chowns the stdio fds to that user itself
// (fixStdioPermissions), with or without IoUid.
func TestIoUID(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		// The container's root must reach its rootfs in the bundle, below
		// the daemon's own 0700 temp dir.
		if err := os.Chmod(d.Dir, 0o711); err != nil {
			t.Fatal(err)
		}
		c, ctx := d.Client(t)
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		const (
			hostID = 200000
			probe  = "echo reopened > /proc/self/fd/1 || exit 9; stat -L -c %u:%g /proc/self/fd/1 /proc/self/fd/2"
			want   = "reopened\n0:0\n0:0\n"
		)
		userns := oci.WithUserNamespace(
			[]specs.LinuxIDMapping{{ContainerID: 0, HostID: hostID, Size: 65536}},
			[]specs.LinuxIDMapping{{ContainerID: 0, HostID: hostID, Size: 65536}})
		start := func(t *testing.T, name string, runtimeOpts any) (containerd.Task, <-chan containerd.ExitStatus, *syncBuffer, *syncBuffer) {
			t.Helper()
			cont := newClientContainer(t, d, c, ctx, d.NewID(name), runtimeOpts, hostID,
				oci.WithProcessArgs("sh", "-c", probe+"; exec sleep 1000"), userns)
			var out, errb syncBuffer
			task, err := cont.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &out, &errb)))
			if err != nil {
				t.Fatal(err)
			}
			exitC, err := task.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := task.Start(ctx); err != nil {
				t.Fatal(err)
			}
			return task, exitC, &out, &errb
		}

		t.Run("with-IoUid", func(t *testing.T) {
			task, exitC, out, errb := start(t, "iouid", &options.Options{IoUid: hostID, IoGid: hostID})
			if !pollUntil(15*time.Second, func() bool { return out.String() == want }) {
				t.Fatalf("with IoUid/IoGid %d: stdout %q, stderr %q; want %q", hostID, out.String(), errb.String(), want)
			}
			spec, err := task.Spec(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pspec := *spec.Process
			pspec.Args = []string{"sh", "-c", probe}
			var exOut, exErr syncBuffer
			proc, err := task.Exec(ctx, "probe", &pspec, cio.NewCreator(cio.WithStreams(nil, &exOut, &exErr)))
			if err != nil {
				t.Fatal(err)
			}
			execExit, err := proc.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := proc.Start(ctx); err != nil {
				t.Fatal(err)
			}
			code := waitExit(t, "exec probe", execExit)
			if code != 0 || !waitOutput(&exOut, want) || exErr.String() != "" {
				t.Fatalf("exec with IoUid/IoGid %d: exit %d, stdout %q, stderr %q; want 0, %q, none", hostID, code, exOut.String(), exErr.String(), want)
			}
			if _, err := proc.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitExit(t, "container", exitC)
			if _, err := task.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if errb.String() != "" {
				t.Fatalf("stderr %q, want none", errb.String())
			}
		})
		t.Run("without", func(t *testing.T) {
			task, exitC, out, errb := start(t, "noiouid", nil)
			code := waitExit(t, "container", exitC)
			denied := pollUntil(10*time.Second, func() bool { return strings.Contains(errb.String(), "Permission denied") })
			if code != 9 || strings.Contains(out.String(), "reopened") || !denied {
				t.Fatalf("without IoUid: exit %d, stdout %q, stderr %q; want exit 9 and permission denied", code, out.String(), errb.String())
			}
			if _, err := task.Delete(ctx); err != nil {
				t.Fatal(err)
			}
		})
	})
}

// TestOutputFIFOsAreDirect: with no OutputBuffer and no IoUid/IoGid, the
// init's and an exec's stdout and stderr are containerd's FIFOs
// themselves, not pipes of the shim's (the shim stays out of the data
// path); the output still arrives whole.
func TestOutputFIFOsAreDirect(t *testing.T) {
	if runtimeName() != defaultRuntime {
		t.Skip("Keel's own data path: containerd's shim copies through pipes")
	}
	const probe = "readlink /proc/self/fd/1; readlink /proc/self/fd/2 >&2; head -c 200000 /dev/zero | busybox tr '\\0' z"
	// run runs ctr with args (ending in the probe) and checks what the
	// probe printed: fd 1 and 2, then all of its output.
	run := func(t *testing.T, d *Daemon, what string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := d.CtrCmd(ctx, append(args, "sh", "-c", probe)...)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v, stderr %q", what, err, stderr.String())
		}
		if n := strings.Count(out.String(), "z"); n != 200000 {
			t.Fatalf("%s: %d bytes of output arrived, want 200000", what, n)
		}
		var links []string
		for _, l := range strings.Split(strings.TrimRight(out.String(), "z")+"\n"+string(withoutCtrLog(stderr.Bytes())), "\n") {
			if l = strings.TrimSpace(l); strings.HasPrefix(l, "/") || strings.HasPrefix(l, "pipe:") {
				links = append(links, l)
			}
		}
		if len(links) != 2 || !strings.HasSuffix(links[0], "-stdout") || !strings.HasSuffix(links[1], "-stderr") {
			t.Fatalf("%s: fd 1 and 2 are %q, want containerd's stdout and stderr FIFOs", what, links)
		}
	}
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		run(t, d, "init", "run", "--rm", "--runtime", d.Runtime, imageRef, d.NewID("direct"))

		id := d.NewID("direct-exec")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, id, "RUNNING")
		run(t, d, "exec", "task", "exec", "--exec-id", "probe", id)
		if _, err := d.Ctr(t, "task", "kill", "-s", "SIGKILL", id); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, id, "STOPPED")
		d.TaskRm(t, id)
	})
}
