//go:build linux

package shim

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"

	"github.com/keel-shim/keel/process/fakeruntime"
	"github.com/keel-shim/keel/process/reaper"
)

// TestCreateEventBeforeExit: an init that dies while the runtime's create
// runs is published created, then exited, to containerd, every time.
func TestCreateEventBeforeExit(t *testing.T) {
	r := testReaper(t)
	for i := 0; i < 20; i++ {
		rt, bundle, sock := fakeContainer(t, func(rt fakeruntime.Runtime) error {
			return rt.Post("create", `kill -9 "$(cat "$root/init")"; sleep 0.05`)
		})
		f := serveEvents(t, sock)
		events := NewPublisher(sock, "ns", discardLog())
		svc := NewService("ns", discardLog(), r, events, &Options{Runc: &options.Options{BinaryName: rt.Binary, Root: rt.Root}}, func() {})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := svc.Create(ctx, &taskapi.CreateTaskRequest{ID: "c1", Bundle: bundle}); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1"}); err != nil {
			t.Fatal(err)
		}
		cancel()
		events.Close(5 * time.Second)
		if got, want := strings.Join(f.seen(), " "), TopicCreate+" "+TopicExit+":c1"; got != want {
			t.Fatalf("round %d: containerd heard %q, want %q", i, got, want)
		}
	}
}

// TestWaitDoesNotWaitForItsOwnExitEvent: Wait answers once the events
// published before the exit are delivered, without waiting for the exit's
// own delivery (a Forward round trip to containerd at every exit), and
// the service forgets the exit once the process is deleted.
func TestWaitDoesNotWaitForItsOwnExitEvent(t *testing.T) {
	r := testReaper(t)
	rt, bundle, sock := fakeContainer(t, func(rt fakeruntime.Runtime) error { return rt.InitCommand("exit 3") })
	f := serveEvents(t, sock)
	release := f.hold(TopicExit)
	defer release()
	events := NewPublisher(sock, "ns", discardLog())
	defer events.Close(5 * time.Second)
	svc := NewService("ns", discardLog(), r, events, &Options{Runc: &options.Options{BinaryName: rt.Binary, Root: rt.Root}}, func() {})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := svc.Create(ctx, &taskapi.CreateTaskRequest{ID: "c1", Bundle: bundle}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	// The exit's Forward is held, so a Wait that waited for it could only
	// return once the Forward timed out: not a speed bound, but whether
	// Wait waited at all.
	if took := time.Since(start); took >= forwardTimeout || resp.ExitStatus != 3 {
		t.Fatalf("Wait took %v and returned status %d: want status 3 without waiting for the held exit event", took, resp.ExitStatus)
	}
	if got := strings.Join(f.seen(), " "); got != TopicCreate {
		t.Fatalf("when Wait returned containerd had %q, want the create", got)
	}
	release()
	if _, err := svc.Delete(ctx, &taskapi.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	svc.exitsMu.Lock()
	n := len(svc.exitEvents)
	svc.exitsMu.Unlock()
	if n != 0 {
		t.Fatalf("%d exits still recorded after Delete", n)
	}
}

// fakeContainer writes a fake runtime, set up by setup, and a bundle for
// container c1 in a new directory; it returns them and the path for a
// fake containerd's events socket.
func fakeContainer(t *testing.T, setup func(fakeruntime.Runtime) error) (rt fakeruntime.Runtime, bundle, sock string) {
	t.Helper()
	dir := t.TempDir()
	rt, err := fakeruntime.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := setup(rt); err != nil {
		t.Fatal(err)
	}
	if bundle, err = fakeruntime.Bundle(dir, "c1", false); err != nil {
		t.Fatal(err)
	}
	return rt, bundle, filepath.Join(dir, "containerd.sock.ttrpc")
}

func testReaper(t testing.TB) *reaper.Reaper {
	t.Helper()
	r, err := reaper.New()
	if err != nil {
		t.Fatal(err)
	}
	return r
}
