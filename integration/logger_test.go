//go:build linux

package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLogFile sends a container's output to a file:// log URI whose parent
// directories do not exist yet: stdout and stderr both land in the file, and
// a second container with the same URI appends. A container writing 10 MB
// as fast as it can loses nothing.
func TestLogFile(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		logPath := filepath.Join(t.TempDir(), "a", "b", "c.log")
		uri := "file://" + logPath
		var prev string // the file after the previous run
		for run := 1; run <= 2; run++ {
			script := fmt.Sprintf("for i in 1 2 3; do echo run%d-out-$i; echo run%d-err-$i >&2; done", run, run)
			out, err := d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, "--log-uri", uri, imageRef, d.NewID("logfile"), "sh", "-c", script)
			if err != nil {
				t.Fatal(err)
			}
			if out != "" {
				t.Errorf("run %d: ctr printed %q, want nothing: the output goes to the file", run, out)
			}
			// ctr run --rm returns after the task's delete, by which time the
			// shim has copied all the output.
			data, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatalf("run %d: %v", run, err)
			}
			got := string(data)
			if !strings.HasPrefix(got, prev) {
				t.Fatalf("run %d rewrote the log instead of appending: before %q, after %q", run, prev, got)
			}
			added := strings.Split(strings.TrimSuffix(got[len(prev):], "\n"), "\n")
			// stdout and stderr are separate streams (separate pipes in the
			// reference shim), so only each stream's own order is certain.
			var outs, errs []string
			for _, l := range added {
				switch {
				case strings.HasPrefix(l, fmt.Sprintf("run%d-out-", run)):
					outs = append(outs, l)
				case strings.HasPrefix(l, fmt.Sprintf("run%d-err-", run)):
					errs = append(errs, l)
				default:
					t.Fatalf("run %d: unexpected line %q in the log:\n%s", run, l, got)
				}
			}
			if !isKeel(d) && len(errs) == 0 && len(outs) == 3 {
				// containerd's shim copies stdout and stderr to one file
				// from two goroutines sharing a reference-counted writer;
				// when stdout's copy ends before stderr's has taken its
				// reference, the file is closed and stderr is dropped
				// silently (a leftover of containerd#3118). Seen in about
				// 1 run in 20 with the shims of 1.6 and 2.4.
				t.Logf("run %d: the reference shim dropped stderr (known race), not checked: %q", run, added)
				prev = got
				continue
			}
			for i := 1; i <= 3; i++ {
				if len(outs) != 3 || len(errs) != 3 || outs[i-1] != fmt.Sprintf("run%d-out-%d", run, i) || errs[i-1] != fmt.Sprintf("run%d-err-%d", run, i) {
					t.Fatalf("run %d: log lines %q, want run%d-out-1..3 and run%d-err-1..3, each stream in order", run, added, run, run)
				}
			}
			prev = got
		}

		big := filepath.Join(t.TempDir(), "big", "big.log")
		const size = 10 << 20
		start := time.Now()
		if _, err := d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, "--log-uri", "file://"+big, imageRef, d.NewID("logbig"),
			"head", "-c", strconv.Itoa(size), "/dev/zero"); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(big)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != size {
			time.Sleep(3 * time.Second) // only to tell late output from lost output
			fi2, _ := os.Stat(big)
			t.Fatalf("10 MB log: %d bytes when ctr run returned (%d bytes 3s later), want %d", fi.Size(), fi2.Size(), size)
		}
		t.Logf("10 MB through a file:// log in %v", time.Since(start))
	})
}

// buildLogbin builds testdata/logbin, the logging program of the binary://
// tests, into a directory removed when t ends.
func buildLogbin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "logbin")
	cmd := exec.Command("go", "build", "-o", bin, "main.go")
	cmd.Dir = filepath.Join("testdata", "logbin")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build testdata/logbin: %v\n%s", err, out)
	}
	// The process leaks that the tests look for must not outlive them.
	t.Cleanup(func() {
		for _, pid := range loggerPids(bin, "") {
			t.Logf("cleanup: killing leftover logger %d %q", pid, cmdline(pid))
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return bin
}

// loggerPids lists live processes of the logging binary bin, only those
// writing to dir if dir is not "".
func loggerPids(bin, dir string) []int {
	var pids []int
	for _, pid := range allPids() {
		args := cmdline(pid)
		if len(args) == 0 || args[0] != bin || exited(pid) {
			continue
		}
		if dir == "" || slices.Contains(args, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// loggerURI is the log URI that runs bin writing into dir, signalling
// readiness as mode says (see testdata/logbin).
func loggerURI(scheme, bin, dir, mode string) string {
	q := url.Values{"dir": {dir}, "mode": {mode}}
	return scheme + "://" + bin + "?" + q.Encode()
}

// waitLoggerGone polls until no logger writing to dir is left.
func waitLoggerGone(t *testing.T, bin, dir string, timeout time.Duration) {
	t.Helper()
	if !pollUntil(timeout, func() bool { return len(loggerPids(bin, dir)) == 0 }) {
		pids := loggerPids(bin, dir)
		var desc []string
		for _, p := range pids {
			st, _ := readStat(p)
			desc = append(desc, fmt.Sprintf("%d (parent %d %q)", p, st.Ppid, cmdline(st.Ppid)))
		}
		t.Fatalf("logging process still running %v after its container was removed: %s", timeout, strings.Join(desc, ", "))
	}
}

// readLoggerFile reads a file the logger wrote into dir, "" if none.
func readLoggerFile(dir, name string) string {
	b, _ := os.ReadFile(filepath.Join(dir, name))
	return string(b)
}

// TestLogBinary sends a container's output to a logging binary, with the
// binary:// (ready when it closes fd 5) and binary-v2:// (ready when it
// writes a byte there) schemes, and checks that bad loggers and URIs make
// `ctr run` fail in bounded time without leaving anything behind.
func TestLogBinary(t *testing.T) {
	bin := buildLogbin(t)
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		refShim := !isKeel(d)
		// Keel gives up on a logger that does not say it is ready after
		// 10s; that case runs alongside the others. (The reference shim
		// waits as long as the logger keeps its ready pipe open.)
		var hang pendingRun
		if !refShim {
			hang = startBadLoggerRun(d, bin, t.TempDir(), "binary", "hang")
		}
		// A logger that does not exit by itself at EOF must still not
		// outlive its container: the shim has to end it (containerd's shim
		// sends SIGTERM at once, then SIGKILL after 12s). Checked last.
		lingerDir := t.TempDir()
		lingerOut, lingerErr := d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, "--log-uri", loggerURI("binary", bin, lingerDir, "linger"),
			imageRef, d.NewID("logbin"), "echo", "hi")

		for _, tc := range []struct{ scheme, mode string }{
			{"binary", "close"},
			{"binary", "byte"},
			{"binary-v2", "byte"},
		} {
			t.Run(tc.scheme+"-"+tc.mode, func(t *testing.T) {
				if tc.scheme == "binary-v2" && refShim && !refShimKnowsBinaryV2(d.Version) {
					t.Skipf("the reference shim of containerd %s does not know binary-v2:// (2.4's does)", d.Version)
				}
				dir := t.TempDir()
				id := d.NewID("logbin")
				out, err := d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, "--log-uri", loggerURI(tc.scheme, bin, dir, tc.mode),
					imageRef, id, "sh", "-c", "echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2")
				if err != nil {
					t.Fatal(err)
				}
				if out != "" {
					t.Errorf("ctr printed %q, want nothing: the output goes to the logger", out)
				}
				// The logger ends by itself once the container's output
				// has ended: it writes "done" on EOF of both streams.
				waitLoggerGone(t, bin, dir, 10*time.Second)
				if readLoggerFile(dir, "done") == "" {
					t.Fatalf("the logger exited without reaching EOF on its input (stdout %q, stderr %q)",
						readLoggerFile(dir, "stdout"), readLoggerFile(dir, "stderr"))
				}
				if got := readLoggerFile(dir, "stdout"); got != "out-1\nout-2\n" {
					t.Errorf("logger's stdout %q, want %q", got, "out-1\nout-2\n")
				}
				if got := readLoggerFile(dir, "stderr"); got != "err-1\nerr-2\n" {
					t.Errorf("logger's stderr %q, want %q", got, "err-1\nerr-2\n")
				}
				var env map[string]string
				if err := json.Unmarshal([]byte(readLoggerFile(dir, "env")), &env); err != nil {
					t.Fatalf("logger's env record: %v", err)
				}
				if env["CONTAINER_ID"] != id || env["CONTAINER_NAMESPACE"] != d.Namespace {
					t.Errorf("logger's environment %v, want CONTAINER_ID=%s CONTAINER_NAMESPACE=%s", env, id, d.Namespace)
				}
				// Only those two, as containerd's shim gives it: not the
				// shim's TTRPC_ADDRESS, NOTIFY_SOCKET and the rest.
				if env["count"] != "2" {
					t.Errorf("the logger's environment has %s variables, want only CONTAINER_ID and CONTAINER_NAMESPACE", env["count"])
				}
				// The query becomes "key value" pairs: Keel sorts them by
				// key, containerd's shim takes Go's map order.
				var args []string
				if err := json.Unmarshal([]byte(readLoggerFile(dir, "args")), &args); err != nil {
					t.Fatalf("logger's args record: %v", err)
				}
				pairs := map[string]string{}
				for i := 1; i+1 < len(args); i += 2 {
					pairs[args[i]] = args[i+1]
				}
				if len(args) != 5 || args[0] != bin || len(pairs) != 2 || pairs["dir"] != dir || pairs["mode"] != tc.mode {
					t.Errorf("logger's args %q, want %s and the pairs dir %s, mode %s", args, bin, dir, tc.mode)
				} else if !refShim && (args[1] != "dir" || args[3] != "mode") {
					t.Errorf("logger's args %q: Keel passes the query's keys sorted", args)
				}
				if readLoggerFile(dir, "sigterm") != "" {
					t.Logf("the shim sent the logger a SIGTERM while it was still copying")
				}
			})
		}

		// Bad loggers and URIs: `ctr run` fails, quickly, with a message
		// naming the problem, and leaves no logger, shim or mount behind.
		v2Unknown := ""
		if !refShimKnowsBinaryV2(d.Version) {
			v2Unknown = "the reference shim of containerd " + d.Version + " does not know binary-v2://"
		}
		badCases := []struct {
			name, scheme, mode string
			uri                string   // instead of a logbin URI
			want               []string // in ctr's error, any of
			keelOnly           string   // why the reference shim differs
		}{
			{name: "missing-binary", uri: "binary:///nonexistent/keel-logger", want: []string{"/nonexistent/keel-logger"}},
			{name: "v2-exits-at-once", scheme: "binary-v2", mode: "exit", want: []string{"did not call ready", "without signalling ready"},
				keelOnly: v2Unknown},
			{name: "v2-closes-without-byte", scheme: "binary-v2", mode: "close", want: []string{"did not call ready", "without signalling ready"},
				keelOnly: v2Unknown},
			{name: "exits-at-once", scheme: "binary", mode: "exit", want: []string{"exited before the container started"},
				keelOnly: "the reference shim takes the EOF of an exited binary:// logger for ready"},
			// ctr passes any scheme on; the shim refuses it.
			{name: "unknown-scheme", uri: "ftp://x", want: []string{"ftp"}},
		}
		for _, tc := range badCases {
			t.Run(tc.name, func(t *testing.T) {
				if refShim && tc.keelOnly != "" {
					t.Skip(tc.keelOnly)
				}
				dir := t.TempDir()
				uri := tc.uri
				if uri == "" {
					uri = loggerURI(tc.scheme, bin, dir, tc.mode)
				}
				r := runBadLogger(d, d.NewID("badlog"), uri)
				checkBadLoggerRun(t, d, r, bin, dir, tc.want, 0)
			})
		}

		t.Run("lingers-after-eof", func(t *testing.T) {
			if lingerErr != nil || lingerOut != "" {
				t.Fatalf("ctr run: %v, printed %q; want success and nothing printed", lingerErr, lingerOut)
			}
			if !pollUntil(10*time.Second, func() bool { return readLoggerFile(lingerDir, "done") != "" }) {
				t.Fatalf("the logger did not reach EOF within 10s (stdout %q)", readLoggerFile(lingerDir, "stdout"))
			}
			if got := readLoggerFile(lingerDir, "stdout"); got != "hi\n" {
				t.Errorf("logger's stdout %q, want %q", got, "hi\n")
			}
			waitLoggerGone(t, bin, lingerDir, 15*time.Second)
		})
		t.Run("never-ready", func(t *testing.T) {
			if refShim {
				t.Skip("the reference shim waits for a binary:// logger without a time limit")
			}
			r := <-hang.done
			checkBadLoggerRun(t, d, r, bin, hang.dir, []string{"did not signal ready in time"}, 9*time.Second)
		})
	})
}

// badLoggerRun is a `ctr run --rm` with a log URI that must fail.
type badLoggerRun struct {
	id, uri string
	err     error
	took    time.Duration
}

type pendingRun struct {
	dir  string
	done chan badLoggerRun
}

// runBadLogger runs a short container id with the log URI uri. It does
// not use t, so that it can run in a goroutine.
func runBadLogger(d *Daemon, id, uri string) badLoggerRun {
	r := badLoggerRun{id: id, uri: uri}
	start := time.Now()
	_, r.err = d.ctrQuiet(time.Minute, "run", "--rm", "--runtime", d.Runtime, "--log-uri", uri, imageRef, id, "echo", "hi")
	r.took = time.Since(start)
	return r
}

// startBadLoggerRun starts runBadLogger with a logbin URI in the background.
func startBadLoggerRun(d *Daemon, bin, dir, scheme, mode string) pendingRun {
	p := pendingRun{dir: dir, done: make(chan badLoggerRun, 1)}
	id, uri := d.NewID("badlog"), loggerURI(scheme, bin, dir, mode)
	go func() { p.done <- runBadLogger(d, id, uri) }()
	return p
}

// checkBadLoggerRun checks a run that had to fail: in less than 20s (and
// not before minTook), with one of the messages want, and with no task,
// container, shim, logger or mount left.
func checkBadLoggerRun(t *testing.T, d *Daemon, r badLoggerRun, bin, dir string, want []string, minTook time.Duration) {
	t.Helper()
	t.Logf("ctr run --log-uri %s -> after %v: %v", r.uri, r.took.Round(time.Millisecond), r.err)
	if r.err == nil {
		t.Fatalf("ctr run with log URI %s succeeded, want a failure", r.uri)
	}
	if r.took > 20*time.Second || r.took < minTook {
		t.Errorf("ctr run with log URI %s failed after %v, want between %v and 20s", r.uri, r.took, minTook)
	}
	msg := r.err.Error()
	if !slices.ContainsFunc(want, func(w string) bool { return strings.Contains(msg, w) }) {
		t.Errorf("ctr's error does not say what is wrong (want one of %q): %v", want, r.err)
	}
	if _, ok := d.Tasks(t)[r.id]; ok {
		t.Errorf("task %s still listed after the failed run", r.id)
	}
	if out, _ := d.ctrQuiet(time.Minute, "containers", "ls", "-q"); slices.Contains(strings.Fields(out), r.id) {
		t.Errorf("container %s still listed after the failed ctr run --rm", r.id)
	}
	waitNoShim(t, d, r.id)
	waitLoggerGone(t, bin, dir, 15*time.Second)
	if m := mountsWith(r.id); len(m) > 0 {
		t.Errorf("mounts of %s left after the failed run: %q", r.id, m)
	}
}

// mountsWith lists the mount points in our mount namespace whose path
// contains s.
func mountsWith(s string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	var found []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.Contains(unescapeMount(fields[4]), s) {
			found = append(found, fields[4])
		}
	}
	return found
}

// refShimKnowsBinaryV2 tells whether the runc shim of a containerd version
// takes binary-v2:// log URIs: 2.2.9's answers "unknown STDIO scheme
// binary-v2", 2.4.2's takes them.
func refShimKnowsBinaryV2(version string) bool {
	return !isV1(version) && version != "2.2"
}
