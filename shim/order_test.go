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
		dir := t.TempDir()
		rt, err := fakeruntime.Write(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.Post("create", `kill -9 "$(cat "$root/init")"; sleep 0.05`); err != nil {
			t.Fatal(err)
		}
		bundle, err := fakeruntime.Bundle(dir, "c1", false)
		if err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, "containerd.sock.ttrpc")
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

func testReaper(t testing.TB) *reaper.Reaper {
	t.Helper()
	r, err := reaper.New()
	if err != nil {
		t.Fatal(err)
	}
	return r
}
