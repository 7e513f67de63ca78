//go:build linux

package shim

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
)

func TestShimOOMScoreAdj(t *testing.T) {
	for containerd, want := range map[int]int{-999: -998, -500: -499, 0: 1, 999: 1000, 1000: 1000} {
		if got := shimOOMScoreAdj(containerd); got != want {
			t.Errorf("shimOOMScoreAdj(%d) = %d, want %d", containerd, got, want)
		}
	}
}

// TestDaemonMaxProcs: the daemon runs with GOMAXPROCS=1, and the processes
// it starts see the GOMAXPROCS containerd gave, or none if it gave none.
func TestDaemonMaxProcs(t *testing.T) {
	for _, tc := range []struct {
		environ        []string
		want, restored string
	}{
		{[]string{"PATH=/bin", "GOMAXPROCS=2"}, "PATH=/bin GOMAXPROCS=1 KEEL_CONTAINERD_GOMAXPROCS=2", "2"},
		{[]string{"PATH=/bin"}, "PATH=/bin GOMAXPROCS=1 KEEL_CONTAINERD_GOMAXPROCS=", ""},
	} {
		env := daemonEnv(tc.environ)
		if got := strings.Join(env, " "); got != tc.want {
			t.Errorf("daemonEnv(%q) = %q, want %q", tc.environ, got, tc.want)
		}
		t.Setenv("GOMAXPROCS", daemonMaxProcs)
		t.Setenv(containerdMaxProcsEnv, strings.TrimPrefix(env[len(env)-1], containerdMaxProcsEnv+"="))
		tuneDaemon(discardLog())
		if v, ok := os.LookupEnv(containerdMaxProcsEnv); ok {
			t.Errorf("after tuneDaemon %s=%q is left for the runtime", containerdMaxProcsEnv, v)
		}
		v, ok := os.LookupEnv("GOMAXPROCS")
		if tc.restored == "" && ok || v != tc.restored {
			t.Errorf("from %q: GOMAXPROCS for the runtime is %q (set: %v), want %q", tc.environ, v, ok, tc.restored)
		}
	}
}

// TestSchedCoreCookie: with SCHED_CORE set (containerd's sched_core), the
// daemon gets a core-scheduling cookie of its own. Run in a child process,
// since the cookie is the whole process's.
func TestSchedCoreCookie(t *testing.T) {
	if os.Getenv("KEEL_TUNE_CHILD") == "1" {
		tuneDaemon(discardLog())
		var cookie uint64
		err := unix.Prctl(unix.PR_SCHED_CORE, unix.PR_SCHED_CORE_GET, 0, unix.PR_SCHED_CORE_SCOPE_THREAD, uintptr(unsafe.Pointer(&cookie)))
		fmt.Printf("cookie=%d err=%v\n", cookie, err)
		return
	}
	var probe uint64
	if err := unix.Prctl(unix.PR_SCHED_CORE, unix.PR_SCHED_CORE_GET, 0, unix.PR_SCHED_CORE_SCOPE_THREAD, uintptr(unsafe.Pointer(&probe))); err != nil {
		t.Skipf("no core scheduling on this kernel: %v", err)
	}
	for env, wantCookie := range map[string]bool{"SCHED_CORE=1": true, "SCHED_CORE=": false} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSchedCoreCookie$")
		cmd.Env = append(os.Environ(), "KEEL_TUNE_CHILD=1", env)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", env, err, out)
		}
		got := strings.Contains(string(out), "err=<nil>") && !strings.Contains(string(out), "cookie=0 ")
		if got != wantCookie {
			t.Errorf("%s: child says %q; want a cookie: %v", env, out, wantCookie)
		}
	}
}

// TestLogLinesLookLikeContainerds: logfmt with containerd's lower-case
// level names, so one filter catches containerd's and the shim's errors.
func TestLogLinesLookLikeContainerds(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: containerdStyle}))
	log.Debug("d")
	log.Info("i", "id", "c1")
	log.Warn("w")
	log.Error("e", "error", "boom")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	for i, want := range []string{"level=debug msg=d", "level=info msg=i id=c1", "level=warning msg=w", "level=error msg=e error=boom"} {
		if i >= len(lines) || !strings.HasPrefix(lines[i], "time=") || !strings.HasSuffix(lines[i], want) {
			t.Errorf("line %d = %q, want time=... %s", i, lines[i], want)
		}
	}
}

// TestTraceIDsInLogLines: a request that carries containerd's trace
// context logs its trace and span IDs.
func TestTraceIDsInLogLines(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, nil))
	guard := errorBoundary(log)
	md := ttrpc.MD{}
	md.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	ctx := ttrpc.WithMetadata(context.Background(), md)
	_, _ = guard(ctx, func(any) error { return nil }, &ttrpc.UnaryServerInfo{FullMethod: "Create"},
		func(ctx context.Context, _ func(any) error) (any, error) {
			logFrom(ctx, log).Info("created")
			return nil, nil
		})
	if !strings.Contains(buf.String(), "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7") {
		t.Errorf("log %q has no trace and span IDs", buf.String())
	}
	for _, bad := range []string{"", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-xyz-00f067aa0ba902b7-01", "garbage"} {
		if _, _, ok := parseTraceparent(bad); ok {
			t.Errorf("parseTraceparent(%q) accepted it", bad)
		}
	}
}

// TestOpenLogFIFO: the daemon's log FIFO becomes the given fd, blocking
// for writes, whether containerd's reader is there already (the usual
// case: containerd opens it before `start`) or comes later; a missing
// FIFO is an error (the daemon then logs nowhere).
func TestOpenLogFIFO(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "log")
	if err := unix.Mkfifo(path, 0o700); err != nil {
		t.Fatal(err)
	}
	target := func() int {
		fd, err := unix.Open(os.DevNull, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	check := func(fd int, reader *os.File) {
		t.Helper()
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || flags&unix.O_NONBLOCK != 0 {
			t.Fatalf("log fd flags %#x (%v): want blocking writes", flags, err)
		}
		if _, err := unix.Write(fd, []byte("line\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		n, err := reader.Read(buf)
		if err != nil || string(buf[:n]) != "line\n" {
			t.Fatalf("reader got %q, %v", buf[:n], err)
		}
	}

	// containerd's reader is there: as containerd opens it, read-write.
	reader, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd := target()
	if err := openLogFIFO(path, fd, time.Second); err != nil {
		t.Fatal(err)
	}
	check(fd, reader)
	reader.Close()
	unix.Close(fd)

	// The reader comes later: the open waits for it.
	fd = target()
	opened := make(chan error, 1)
	go func() { opened <- openLogFIFO(path, fd, 10*time.Second) }()
	time.Sleep(100 * time.Millisecond)
	reader, err = os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if err := <-opened; err != nil {
		t.Fatal(err)
	}
	check(fd, reader)

	if err := openLogFIFO(filepath.Join(dir, "missing"), target(), time.Second); err == nil {
		t.Fatal("a missing FIFO opened")
	}
}
