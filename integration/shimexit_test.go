//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestShimExitsAfterDelete checks that the shim process and its socket
// under /run/containerd/s go away once the last container is deleted, both
// by `ctr task rm` + `ctr container rm` and by `ctr run --rm`.
func TestShimExitsAfterDelete(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		t.Run("task-rm", func(t *testing.T) {
			id := d.NewID("gone")
			if _, err := d.Ctr(t, "run", "-d", "--runtime", d.Runtime, imageRef, id, "sleep", "1000"); err != nil {
				t.Fatal(err)
			}
			task := d.WaitStatus(t, id, "RUNNING")
			shim, sockets := shimAndSockets(t, d, id, task.Pid)
			if _, err := d.Ctr(t, "task", "kill", "-s", "SIGKILL", id); err != nil {
				t.Fatal(err)
			}
			d.WaitStatus(t, id, "STOPPED")
			if _, err := d.Ctr(t, "task", "rm", id); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Ctr(t, "containers", "rm", id); err != nil {
				t.Fatal(err)
			}
			waitShimGone(t, d, id, shim, sockets)
		})
		t.Run("run-rm", func(t *testing.T) {
			id := d.NewID("gonerm")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// Runs until told to stop, so the shim can be looked at first.
			run := d.CtrCmd(ctx, "run", "--rm", "--runtime", d.Runtime, imageRef, id,
				"sh", "-c", "while [ ! -e /tmp/stop ]; do sleep 0.05; done")
			var out strings.Builder
			run.Stdout, run.Stderr = &out, &out
			if err := run.Start(); err != nil {
				t.Fatal(err)
			}
			defer run.Process.Kill()
			exited := make(chan error, 1)
			go func() { exited <- run.Wait() }()
			var task Task
			for deadline := time.Now().Add(15 * time.Second); task.Status != "RUNNING"; {
				select {
				case err := <-exited:
					t.Fatalf("ctr run --rm ended before its task ran: %v\n%s", err, out.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("task %s not RUNNING within 15s", id)
				}
				task = d.Tasks(t)[id]
				time.Sleep(20 * time.Millisecond)
			}
			shim, sockets := shimAndSockets(t, d, id, task.Pid)
			if _, err := d.Ctr(t, "task", "exec", "--exec-id", "stop", id, "touch", "/tmp/stop"); err != nil {
				t.Fatal(err)
			}
			if err := <-exited; err != nil {
				t.Fatalf("ctr run --rm: %v\n%s", err, out.String())
			}
			waitShimGone(t, d, id, shim, sockets)
		})
	})
}

// shimAndSockets finds the task's shim and the sockets it serves under
// /run/containerd/s, checking they agree with the address containerd
// recorded in the bundle.
func shimAndSockets(t testing.TB, d *Daemon, id string, initPid int) (int, []string) {
	t.Helper()
	shim := d.ShimOf(t, id, initPid)
	all, err := unixSockets(shim)
	if err != nil {
		t.Fatal(err)
	}
	var sockets []string
	for _, p := range all {
		if strings.HasPrefix(p, "/run/containerd/s/") {
			sockets = append(sockets, p)
		}
	}
	// A listening socket and its accepted connections show the same path.
	slices.Sort(sockets)
	sockets = slices.Compact(sockets)
	if len(sockets) == 0 {
		t.Fatalf("shim %d holds no socket under /run/containerd/s/ (its unix sockets: %v)", shim, all)
	}
	addr := bundleAddress(t, d, id)
	if !slices.Contains(sockets, addr) {
		t.Fatalf("bundle says the shim listens on %s, but shim %d holds %v", addr, shim, sockets)
	}
	t.Logf("shim %d of %s serves %v", shim, id, sockets)
	return shim, sockets
}

// bundleAddress reads the shim's socket from the bundle: containerd 1.6 keeps
// it in "address", 2.x in "bootstrap.json".
func bundleAddress(t testing.TB, d *Daemon, id string) string {
	t.Helper()
	dir := d.BundleDir(id)
	var addr string
	if b, err := os.ReadFile(filepath.Join(dir, "bootstrap.json")); err == nil {
		var bs struct{ Address string }
		if err := json.Unmarshal(b, &bs); err != nil {
			t.Fatalf("bootstrap.json: %v: %s", err, b)
		}
		addr = bs.Address
	} else if b, err := os.ReadFile(filepath.Join(dir, "address")); err == nil {
		addr = strings.TrimSpace(string(b))
	} else {
		t.Fatalf("bundle %s has neither bootstrap.json nor address", dir)
	}
	return strings.TrimPrefix(addr, "unix://")
}

// waitShimGone polls until the shim has exited and its sockets are removed.
func waitShimGone(t testing.TB, d *Daemon, id string, shim int, sockets []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		for _, s := range sockets {
			if _, err := os.Lstat(s); err == nil {
				left = append(left, s)
			}
		}
		live := d.ShimPids(id)
		if exited(shim) && len(live) == 0 && len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s after delete: shim %d exited=%v, live shims for %s %v, sockets left %v",
				shim, exited(shim), id, live, left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
