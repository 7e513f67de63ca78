//go:build linux

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// What a production node does to a shim that a lab containerd does not.

// TestShimKilledReportsExit: after a shim is SIGKILLed, containerd's
// cleanup (`containerd-shim-keel-v2 delete`) publishes the container's
// exit with the init's pid and its real status: 137 for an init the
// cleanup killed, the recorded status for one that had exited already.
// The CRI matches exits to containers by pid: 0 leaves pods behind.
func TestShimKilledReportsExit(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		w := d.WatchEvents(t)
		running, exited := d.NewID("killed-running"), d.NewID("killed-exited")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, running, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, exited, "sh", "-c", "sleep 0.5; exit 7"); err != nil {
			t.Fatal(err)
		}
		pids := map[string]int{running: d.WaitStatus(t, running, "RUNNING").Pid}
		pids[exited] = d.Tasks(t)[exited].Pid
		shims := map[string]int{running: d.ShimOf(t, running, pids[running])}
		shims[exited] = d.ShimOf(t, exited, pids[exited])
		d.WaitStatus(t, exited, "STOPPED") // its shim has recorded the exit

		for id, want := range map[string]int{running: 137, exited: 7} {
			before := len(w.Events())
			if err := syscall.Kill(shims[id], syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			// containerd's cleanup publishes the exit, then the delete.
			for _, topic := range []string{"/tasks/exit", "/tasks/delete"} {
				got, ok := waitEventAfter(w, before, 20*time.Second, func(e Event) bool {
					return e.Topic == topic && e.str("container_id") == id
				})
				if !ok {
					t.Fatalf("%s: no %s after its shim was killed", id, topic)
				}
				if got.num("pid") != pids[id] || got.num("exit_status") != want {
					t.Errorf("%s: %s says pid %d status %d, want pid %d status %d (%s)",
						id, topic, got.num("pid"), got.num("exit_status"), pids[id], want, got.Line)
				}
			}
		}
	})
}

// waitEventAfter waits for an event past the first n that matches.
func waitEventAfter(w *EventWatcher, n int, timeout time.Duration, match func(Event) bool) (Event, bool) {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		events := w.Events()
		for i := n; i < len(events); i++ {
			if match(events[i]) {
				return events[i], true
			}
		}
	}
	return Event{}, false
}

// TestShimOOMScore: the shim's oom_score_adj is containerd's plus one, so
// that the kernel's OOM killer takes a shim before containerd.
func TestShimOOMScore(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		// systemd units set OOMScoreAdjust (containerd.service: -999); lowering a
		// score needs CAP_SYS_RESOURCE, which this sandbox lacks, so raise it.
		score := filepath.Join("/proc", strconv.Itoa(d.cmd.Process.Pid), "oom_score_adj")
		if err := os.WriteFile(score, []byte("500"), 0); err != nil {
			t.Fatal(err)
		}
		id := d.NewID("oomscore")
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		shim := d.ShimOf(t, id, d.WaitStatus(t, id, "RUNNING").Pid)
		data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(shim), "oom_score_adj"))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(data)); got != "501" {
			t.Errorf("shim oom_score_adj = %s, want 501 (containerd's 500 + 1)", got)
		}
		d.KillAndRemove(t, id)
	})
}

// TestExecTerminalFromRequest: containerd's Go client asks for an exec's
// terminal in the request (cio.WithTerminal) and leaves the process spec's
// terminal false; the exec gets a terminal all the same.
func TestExecTerminalFromRequest(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		c, ctx := d.Client(t)
		id := d.NewID("exectty")
		cont := newClientContainer(t, d, c, ctx, id, nil, 0, oci.WithProcessArgs("sleep", "1000"))
		task, err := cont.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		spec, err := cont.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pspec := *spec.Process
		pspec.Terminal = false
		pspec.Args = []string{"sh", "-c", "test -t 1 && echo on-a-tty"}
		var out syncBuffer
		proc, err := task.Exec(ctx, "tty", &pspec, cio.NewCreator(cio.WithStreams(nil, &out, nil), cio.WithTerminal))
		if err != nil {
			t.Fatal(err)
		}
		exitCh, err := proc.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := proc.Start(ctx); err != nil {
			t.Fatalf("exec with a terminal requested in the request only: %v", err)
		}
		select {
		case st := <-exitCh:
			if st.ExitCode() != 0 {
				t.Errorf("exec exited %d, want 0 (stdout not a terminal?)", st.ExitCode())
			}
		case <-time.After(20 * time.Second):
			t.Fatal("exec did not exit")
		}
		proc.IO().Wait()
		if _, err := proc.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "on-a-tty") {
			t.Errorf("exec output %q, want on-a-tty", out.String())
		}
		task.Kill(ctx, syscall.SIGKILL)
		task.Delete(ctx, containerd.WithProcessKill)
	})
}

// TestShimPprof: at debug level, `ctr shim --id ID pprof goroutines`
// answers from the shim (containerd 2.4's reference shim leaves it
// hanging unless built with its shim_tracing tag).
func TestShimPprof(t *testing.T) {
	d := StartContainerd(t, "2.4")
	id := d.NewID("pprof")
	if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	d.WaitStatus(t, id, "RUNNING")
	out, err := d.ctrQuiet(30*time.Second, "shim", "--id", id, "pprof", "goroutines")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "goroutine ") || !strings.Contains(out, "shim.(*Publisher).forward") {
		t.Errorf("ctr shim pprof goroutines printed no goroutine of the shim:\n%.2000s", out)
	}
	heap, err := d.ctrQuiet(30*time.Second, "shim", "--id", id, "pprof", "heap", "--debug", "1")
	if err != nil || !strings.Contains(heap, "heap profile") {
		t.Errorf("ctr shim pprof heap: %v\n%.500s", err, heap)
	}
	d.KillAndRemove(t, id)
}

// TestShimLogLinesAreLogfmt: the shim's lines in containerd's log are
// logfmt as containerd's own: time, a lower-case level, msg.
func TestShimLogLinesAreLogfmt(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("logfmt")
		if _, err := d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, imageRef, id, "true"); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(d.logPath)
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, line := range strings.Split(string(data), "\n") {
			if !strings.Contains(line, "shim=keel") {
				continue
			}
			kv, err := parseLogfmt(line)
			if err != nil {
				t.Fatalf("not logfmt: %v: %q", err, line)
			}
			if _, err := time.Parse(time.RFC3339Nano, kv["time"]); err != nil {
				t.Errorf("time=%q: %v", kv["time"], err)
			}
			switch kv["level"] {
			case "debug", "info", "warning", "error":
			default:
				t.Errorf("level=%q, want containerd's lower-case names: %q", kv["level"], line)
			}
			if kv["msg"] == "created" && kv["id"] == id && kv["level"] == "info" {
				found = true
			}
		}
		if !found {
			t.Errorf("no level=info msg=created line of the shim for %s in containerd's log", id)
		}
	})
}

// parseLogfmt reads key=value pairs separated by spaces, values bare or
// double-quoted with Go escapes, as logfmt is written.
func parseLogfmt(line string) (map[string]string, error) {
	kv := map[string]string{}
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimLeft(s, " ") {
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsAny(s[:eq], " \"") {
			return nil, fmt.Errorf("no key at %q", s)
		}
		key, rest := s[:eq], s[eq+1:]
		var value string
		if strings.HasPrefix(rest, `"`) {
			end := 1
			for ; end < len(rest) && rest[end] != '"'; end++ {
				if rest[end] == '\\' {
					end++
				}
			}
			if end >= len(rest) {
				return nil, fmt.Errorf("unterminated quote in %q", rest)
			}
			v, err := strconv.Unquote(rest[:end+1])
			if err != nil {
				return nil, err
			}
			value, s = v, rest[end+1:]
		} else {
			value, s, _ = strings.Cut(rest, " ")
		}
		kv[key] = value
	}
	return kv, nil
}
