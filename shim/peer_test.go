//go:build linux

package shim

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
)

// peerEnv makes the test binary, re-executed, act as a client of another
// user: it dials the socket, calls Connect and exits 0 if the call failed.
const peerEnv = "KEEL_TEST_PEER_SOCKET"

func TestMain(m *testing.M) {
	if sock := os.Getenv(peerEnv); sock != "" {
		os.Exit(dialAsPeer(sock))
	}
	os.Exit(m.Run())
}

func dialAsPeer(sock string) int {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return 2 // could not even connect: the test's setup is wrong
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := taskapi.NewTTRPCTaskClient(c).Connect(ctx, &taskapi.ConnectRequest{ID: "x"}); err != nil {
		return 0 // refused
	}
	return 1 // served: the peer check failed
}

// TestPeerOfAnotherUserRefused: the socket is owner-only anyway, but the
// server also checks peer credentials, so a client of another uid that
// gets hold of a connection is not served; the owner is.
func TestPeerOfAnotherUserRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	// A directory the other user can reach, for this test only: the
	// socket's own permissions are what Listen tests elsewhere.
	dir, err := os.MkdirTemp("/tmp", "kpeer")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := NewService("peer", log, nil, NewPublisher("", "peer", log), nil, func() {})
	srv, err := NewServer(svc, log)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	defer srv.Close()

	// The test binary lives in a root-only build dir: run a copy.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	peer := filepath.Join(dir, "peer.test")
	if err := os.WriteFile(peer, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(peer, "-test.run", "^$")
	cmd.Env = append(os.Environ(), peerEnv+"="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("a client running as uid 65534 was served, or could not connect: %v %s", err, out)
	}
	if code := dialAsPeer(sock); code != 1 {
		t.Fatalf("the owner's own client was refused (code %d)", code)
	}
}

// TestSocketRemovesOnlyItsOwn: a stopping shim whose socket path has been
// taken over by a successor leaves the successor's socket alone.
func TestSocketRemovesOnlyItsOwn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s", "shim.sock")
	old, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := ownSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	// The old shim stopped serving; a new `start` replaces the file (a
	// moment later: a shim lives longer than a clock tick).
	time.Sleep(10 * time.Millisecond)
	successor, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer successor.Close()
	mine.remove()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the successor's socket was removed: %v", err)
	}
	theirs, err := ownSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	theirs.remove()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("a shim's own socket was left: %v", err)
	}
}
