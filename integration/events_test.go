//go:build linux

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Event is one line of `ctr events`:
// "2024-01-02 15:04:05.999 +0000 UTC NAMESPACE /TOPIC {json}".
type Event struct {
	Namespace, Topic string
	Fields           map[string]any
	Line             string
}

// str returns a string field of the event's JSON ("" when absent).
func (e Event) str(key string) string {
	s, _ := e.Fields[key].(string)
	return s
}

// num returns a numeric field; exit_status 0 is left out of the JSON.
func (e Event) num(key string) int {
	f, _ := e.Fields[key].(float64)
	return int(f)
}

var eventRE = regexp.MustCompile(`^\S+ \S+ \S+ \S+ (\S*) (/\S+) ?(.*)$`)

// EventWatcher collects the lines of a `ctr events` running in the background.
type EventWatcher struct {
	mu     sync.Mutex
	events []Event
	bad    []string
}

// WatchEvents starts `ctr events` and returns once it is surely subscribed:
// it waits until an event that it caused itself shows up.
func (d *Daemon) WatchEvents(t testing.TB) *EventWatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := d.CtrCmd(ctx, "events")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &EventWatcher{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			w.add(sc.Text())
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		cmd.Wait()
		if t.Failed() {
			t.Logf("events seen:\n%s", w.dump())
		}
	})
	// ctr events prints nothing when it has subscribed, so poke the daemon
	// until our own namespace update comes through.
	probe := d.NewID("probe")
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := d.ctrQuiet(time.Minute, "namespaces", "label", d.Namespace, "keel-probe="+probe); err != nil {
			t.Fatal(err)
		}
		for _, e := range w.Events() {
			if e.Topic == "/namespaces/update" && strings.Contains(e.Line, probe) {
				return w
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("ctr events showed no /namespaces/update within 15s:\n%s", w.dump())
	return nil
}

func (w *EventWatcher) add(line string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := eventRE.FindStringSubmatch(line)
	if m == nil {
		w.bad = append(w.bad, line)
		return
	}
	e := Event{Namespace: m[1], Topic: m[2], Line: line}
	if err := json.Unmarshal([]byte(m[3]), &e.Fields); err != nil && m[3] != "" {
		w.bad = append(w.bad, line)
	}
	w.events = append(w.events, e)
}

// Events returns the events seen so far, in order.
func (w *EventWatcher) Events() []Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Event(nil), w.events...)
}

// WaitUntil polls for up to timeout until an event matches.
func (w *EventWatcher) WaitUntil(timeout time.Duration, match func(Event) bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range w.Events() {
			if match(e) {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitFor polls until an event matches, and returns it.
func (w *EventWatcher) WaitFor(t testing.TB, what string, match func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range w.Events() {
			if match(e) {
				return e
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no event %s within 15s", what)
	return Event{}
}

func (w *EventWatcher) dump() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b strings.Builder
	for _, e := range w.events {
		fmt.Fprintln(&b, e.Line)
	}
	for _, l := range w.bad {
		fmt.Fprintln(&b, "UNPARSED:", l)
	}
	return b.String()
}

// TestEvents checks the task events the shim publishes, and their order, for
// a container that runs an exec and then exits by itself.
func TestEvents(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		w := d.WatchEvents(t)
		id := d.NewID("events")
		// The container waits for a file that the second exec creates, so
		// the first exec surely runs and ends before the container exits.
		if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id,
			"sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 5"); err != nil {
			t.Fatal(err)
		}
		out, err := d.Ctr(t, "task", "exec", "--exec-id", "ex1", id, "sh", "-c", "echo exec-out; exit 3")
		if code := exitCode(err); code != 3 || strings.TrimSpace(out) != "exec-out" {
			t.Fatalf("exec: want output exec-out and exit code 3, got %q, %v", out, err)
		}
		if _, err := d.Ctr(t, "task", "exec", "--exec-id", "ex2", id, "touch", "/tmp/go"); err != nil {
			t.Fatal(err)
		}
		d.WaitStatus(t, id, "STOPPED")
		if code := d.TaskRm(t, id); code != 5 {
			t.Fatalf("ctr task rm reports exit code %d, want 5", code)
		}
		if _, err := d.Ctr(t, "containers", "rm", id); err != nil {
			t.Fatal(err)
		}
		w.WaitFor(t, "/containers/delete for "+id, func(e Event) bool {
			return e.Topic == "/containers/delete" && e.str("id") == id
		})
		haveDelete := w.WaitUntil(5*time.Second, func(e Event) bool {
			return e.Topic == "/tasks/delete" && e.str("container_id") == id
		})
		if !haveDelete && d.Runtime == "io.containerd.runc.v2" && d.Version != "1.6" {
			// The 2.x runc shim queues TaskDelete on a channel and may exit on
			// Shutdown before forwarding it (no drain in pkg/shim). Keel must
			// not lose it; the reference shim sometimes does.
			t.Logf("no /tasks/delete from the reference shim: known containerd 2.x race, not checked")
		} else if !haveDelete {
			t.Fatalf("no /tasks/delete for %s, although the container was deleted:\n%s", id, w.dump())
		}

		// Only the task events of our container, in the order seen.
		var seq []Event
		for _, e := range w.Events() {
			if strings.HasPrefix(e.Topic, "/tasks/") && e.str("container_id") == id {
				seq = append(seq, e)
			}
		}
		idx := func(what string, match func(Event) bool) int {
			for i, e := range seq {
				if match(e) {
					return i
				}
			}
			t.Fatalf("no %s event for %s; task events seen:\n%s", what, id, w.dump())
			return -1
		}
		topic := func(tp string) func(Event) bool { return func(e Event) bool { return e.Topic == tp } }
		create := idx("/tasks/create", topic("/tasks/create"))
		start := idx("/tasks/start", topic("/tasks/start"))
		added := idx("/tasks/exec-added ex1", func(e Event) bool { return e.Topic == "/tasks/exec-added" && e.str("exec_id") == "ex1" })
		started := idx("/tasks/exec-started ex1", func(e Event) bool { return e.Topic == "/tasks/exec-started" && e.str("exec_id") == "ex1" })
		execExit := idx("/tasks/exit of ex1", func(e Event) bool { return e.Topic == "/tasks/exit" && e.str("id") == "ex1" })
		initExit := idx("/tasks/exit of the container", func(e Event) bool { return e.Topic == "/tasks/exit" && e.str("id") == id })
		order := []int{create, start, added, started, execExit, initExit}
		if haveDelete {
			del := idx("/tasks/delete", topic("/tasks/delete"))
			order = append(order, del)
			if got := seq[del].num("exit_status"); got != 5 {
				t.Errorf("/tasks/delete has exit_status %d, want 5", got)
			}
		}
		for i := 1; i < len(order); i++ {
			if order[i-1] >= order[i] {
				t.Fatalf("task events out of order (want create, start, exec-added, exec-started, exec exit, exit, delete):\n%s", w.dump())
			}
		}
		if got := seq[execExit].num("exit_status"); got != 3 {
			t.Errorf("exec's /tasks/exit has exit_status %d, want 3", got)
		}
		if got := seq[initExit].num("exit_status"); got != 5 {
			t.Errorf("container's /tasks/exit has exit_status %d, want 5", got)
		}
		// The exec's pid is the one exec-started announced.
		if p1, p2 := seq[started].num("pid"), seq[execExit].num("pid"); p1 == 0 || p1 != p2 {
			t.Errorf("exec-started pid %d, exec's exit pid %d: want the same, non-zero", p1, p2)
		}
	})
}
