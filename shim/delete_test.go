//go:build linux

package shim

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"google.golang.org/protobuf/proto"

	"github.com/keel-shim/keel/process"
	"github.com/keel-shim/keel/process/fakeruntime"
	"github.com/keel-shim/keel/process/reaper"
	"github.com/keel-shim/keel/runtime"
)

// deleteIn runs the `delete` subcommand against a bundle whose runtime is
// /bin/true (the forced delete succeeds, nothing is mounted) and decodes
// the DeleteResponse it prints.
func deleteIn(t *testing.T, bundle string) *taskapi.DeleteResponse {
	t.Helper()
	if err := saveRuntimeConfig(bundle, runtime.Config{Binary: "/bin/true", Root: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := Delete(Flags{ID: "c1", Namespace: "ns", Bundle: bundle}, &out, &errb); err != nil {
		t.Fatalf("Delete: %v (stderr %q)", err, errb.String())
	}
	var resp taskapi.DeleteResponse
	if err := proto.Unmarshal(out.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	return &resp
}

// TestDeleteReportsRecordedExit: after a shim died, containerd's cleanup
// gets the container's real exit, not a guess.
func TestDeleteReportsRecordedExit(t *testing.T) {
	bundle := filepath.Join(t.TempDir(), "c1")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1700000000, 42).UTC()
	if err := process.SaveExit(bundle, reaper.Exit{Pid: 4242, Status: 7, Time: at}); err != nil {
		t.Fatal(err)
	}
	resp := deleteIn(t, bundle)
	if resp.Pid != 4242 || resp.ExitStatus != 7 || !resp.ExitedAt.AsTime().Equal(at) {
		t.Fatalf("DeleteResponse = %v, want pid 4242 status 7 at %v", resp, at)
	}
}

// TestDeleteWithoutRecordReportsKill: with no recorded exit the forced
// delete killed the init: 128+SIGKILL, with the init's pid from the pid
// file, which containerd puts in /tasks/exit and /tasks/delete.
func TestDeleteWithoutRecordReportsKill(t *testing.T) {
	bundle := filepath.Join(t.TempDir(), "c1")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "init.pid"), []byte("4321"), 0o600); err != nil {
		t.Fatal(err)
	}
	if resp := deleteIn(t, bundle); resp.ExitStatus != 137 || resp.ExitedAt == nil || resp.Pid != 4321 {
		t.Fatalf("DeleteResponse = %v, want pid 4321, status 137 with a time", resp)
	}
}

// TestDeleteRunsRuntimeOnlyIfItMayHoldContainer: containerd runs `delete`
// after every shim. After one that deleted its container (and so dropped
// the saved runtime config) the runtime is not run again: not even the
// default one, found in PATH. After one that died with its container, the
// runtime saved in the bundle force-deletes it.
func TestDeleteRunsRuntimeOnlyIfItMayHoldContainer(t *testing.T) {
	dir := t.TempDir()
	rt, err := fakeruntime.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(rt.Binary, filepath.Join(dir, runtime.DefaultBinary)); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	bundle := filepath.Join(dir, "c1")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	del := func() {
		t.Helper()
		var out, errb bytes.Buffer
		if err := Delete(Flags{ID: "c1", Namespace: "ns", Bundle: bundle}, &out, &errb); err != nil {
			t.Fatalf("Delete: %v (stderr %q)", err, errb.String())
		}
	}

	del()
	if calls := rt.Calls(); len(calls) != 0 {
		t.Fatalf("without a saved runtime config the runtime ran: %q", calls)
	}
	if err := saveRuntimeConfig(bundle, runtime.Config{Binary: rt.Binary, Root: rt.Root}); err != nil {
		t.Fatal(err)
	}
	del()
	if got := strings.Join(rt.Calls(), " "); got != "delete" {
		t.Fatalf("with a saved runtime config the runtime ran %q, want one delete", got)
	}
}
