//go:build linux

package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tmuxServer is a private tmux server (its own socket, -L), whose panes are
// the terminals that `ctr run -t` and `ctr task exec -t` run in.
type tmuxServer struct {
	sock, conf string
}

func newTmux(t *testing.T) *tmuxServer {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		skipOrFail(t, "tmux is not installed: %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	s := &tmuxServer{sock: "keeltest-" + hex.EncodeToString(b), conf: filepath.Join(t.TempDir(), "tmux.conf")}
	// No status line, so a pane is as big as its window; a pane whose
	// command ended stays, with what it printed.
	if err := os.WriteFile(s.conf, []byte("set -g status off\nset -g remain-on-exit on\nset -g history-limit 10000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.tmux("list-panes", "-a", "-F", "#{session_name}: dead=#{pane_dead} #{pane_width}x#{pane_height}")
			t.Logf("tmux panes:\n%s", out)
		}
		s.tmux("kill-server")
	})
	return s
}

func (s *tmuxServer) tmux(args ...string) (string, error) {
	out, err := exec.Command("tmux", append([]string{"-L", s.sock, "-f", s.conf}, args...)...).CombinedOutput()
	return string(out), err
}

func (s *tmuxServer) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.tmux(args...)
	if err != nil {
		t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// start runs argv in a new detached session of the given size. A shell
// waits for it and prints its exit status as EXIT=N: tmux's own
// #{pane_dead_status} is not reliable, as tmux 3.3 sometimes leaves an
// exited pane command unreaped.
func (s *tmuxServer) start(t *testing.T, session string, width, height int, argv []string) {
	t.Helper()
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	s.must(t, "new-session", "-d", "-s", session, "-x", strconv.Itoa(width), "-y", strconv.Itoa(height), "--",
		"sh", "-c", strings.Join(quoted, " ")+"; echo EXIT=$?")
}

func (s *tmuxServer) capture(t *testing.T, session string) string {
	t.Helper()
	return s.must(t, "capture-pane", "-p", "-J", "-S", "-", "-t", session)
}

// typeLine types text and Enter into the session's pane.
func (s *tmuxServer) typeLine(t *testing.T, session, text string) {
	t.Helper()
	s.must(t, "send-keys", "-t", session, "-l", text)
	s.must(t, "send-keys", "-t", session, "Enter")
}

// waitScreen polls the pane until re matches, and returns the match.
func (s *tmuxServer) waitScreen(t *testing.T, session string, re *regexp.Regexp, what string) []string {
	t.Helper()
	var m []string
	if !pollUntil(15*time.Second, func() bool { m = re.FindStringSubmatch(s.capture(t, session)); return m != nil }) {
		t.Fatalf("%s: no %s on the screen within 15s:\n%s", session, what, s.capture(t, session))
	}
	return m
}

// ask runs `echo MARK-$(cmd)-` in the shell of the pane and returns the
// output between the markers. A fresh marker each time tells the answer
// apart from the command line as typed and from earlier answers.
func (s *tmuxServer) ask(t *testing.T, session, cmd string) string {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	mark := "M" + hex.EncodeToString(b)
	s.typeLine(t, session, fmt.Sprintf("echo %s-$(%s)-", mark, cmd))
	return s.waitScreen(t, session, regexp.MustCompile(mark+`-([^$\n]*)-`), "answer to "+cmd)[1]
}

// waitSize asks `stty size` until the terminal is rows x cols: a resize
// travels from tmux through ctr, containerd and the shim, asynchronously.
func (s *tmuxServer) waitSize(t *testing.T, session string, rows, cols int) {
	t.Helper()
	want := fmt.Sprintf("%d %d", rows, cols)
	var seen []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := s.ask(t, session, "busybox stty size")
		if got == want {
			return
		}
		seen = append(seen, got)
		if time.Now().After(deadline) {
			t.Fatalf("%s: stty size says %q, want %q", session, seen, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var exitRE = regexp.MustCompile(`(?m)^EXIT=(\d+)$`)

// waitExitStatus waits until ctr in the pane has exited and returns its
// exit status.
func (s *tmuxServer) waitExitStatus(t *testing.T, session string) int {
	t.Helper()
	m := s.waitScreen(t, session, exitRE, "exit status of ctr")
	code, _ := strconv.Atoi(m[1])
	return code
}

var promptRE = regexp.MustCompile(`(?m)^/ # `)

// TestTerminal runs a shell on a terminal with `ctr run -t` and with `ctr
// task exec -t`, inside tmux panes: the pty gets the pane's size, follows
// its resizes, and the shell's exit status comes back to ctr.
func TestTerminal(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		tm := newTmux(t)

		t.Run("run", func(t *testing.T) {
			id := d.NewID("tty")
			tm.start(t, "run", 100, 30, d.CtrCmd(t.Context(), "run", "-t", "--rm", "--runtime", d.Runtime, imageRef, id, "sh").Args)
			tm.waitScreen(t, "run", promptRE, "shell prompt")
			tm.waitSize(t, "run", 30, 100)
			if got := tm.ask(t, "run", "busybox tty"); !regexp.MustCompile(`^/dev/pts/\d+$`).MatchString(got) {
				t.Errorf("tty says %q, want /dev/pts/N", got)
			}
			tm.must(t, "resize-window", "-t", "run", "-x", "120", "-y", "40")
			tm.waitSize(t, "run", 40, 120)
			tm.typeLine(t, "run", "exit 7")
			if code := tm.waitExitStatus(t, "run"); code != 7 {
				t.Fatalf("ctr run -t exited with %d, want the shell's 7:\n%s", code, tm.capture(t, "run"))
			}
			if _, ok := d.Tasks(t)[id]; ok {
				t.Errorf("task %s still listed after ctr run --rm ended", id)
			}
			waitNoShim(t, d, id)
		})

		t.Run("exec", func(t *testing.T) {
			id := d.NewID("ttyexec")
			if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "1000"); err != nil {
				t.Fatal(err)
			}
			d.WaitStatus(t, id, "RUNNING")
			tm.start(t, "exec", 100, 30, d.CtrCmd(t.Context(), "task", "exec", "-t", "--exec-id", "tty1", id, "sh").Args)
			tm.waitScreen(t, "exec", promptRE, "shell prompt")
			if got := tm.ask(t, "exec", "busybox tty"); !regexp.MustCompile(`^/dev/pts/\d+$`).MatchString(got) {
				t.Errorf("tty in the exec says %q, want /dev/pts/N", got)
			}
			tm.waitSize(t, "exec", 30, 100)
			tm.must(t, "resize-window", "-t", "exec", "-x", "120", "-y", "40")
			tm.waitSize(t, "exec", 40, 120)
			tm.typeLine(t, "exec", "exit 3")
			if code := tm.waitExitStatus(t, "exec"); code != 3 {
				t.Fatalf("ctr task exec -t exited with %d, want the shell's 3:\n%s", code, tm.capture(t, "exec"))
			}
			if st := d.Tasks(t)[id].Status; st != "RUNNING" {
				t.Fatalf("container is %q after its exec ended, want RUNNING", st)
			}
			d.KillAndRemove(t, id)
			if _, err := d.Ctr(t, "containers", "rm", id); err != nil {
				t.Fatal(err)
			}
		})
	})
}
