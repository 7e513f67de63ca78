//go:build linux

package shim

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keel-shim/keel/process/fakeruntime"
	"github.com/keel-shim/keel/process/reaper"
)

// FuzzTaskAPI feeds arbitrary bytes, as the request of each Task API
// method, through the same handler table and error boundary the ttrpc
// server uses, on a live service that holds one container (driven by a
// fake runtime whose init is a real sleep). Each call must return in
// bounded time without a panic, and the service must still answer for
// its container afterwards.
//
// Requests are confined: rootfs mounts are dropped and stdio paths are
// moved into a temp dir, so that fuzzed input cannot mount or create
// files elsewhere on the machine.
//
//	go test -run '^$' -fuzz FuzzTaskAPI -fuzztime 60s ./shim/
func FuzzTaskAPI(f *testing.F) {
	h := newFuzzHarness(f)
	f.Cleanup(func() {
		ctx := context.Background()
		_, _ = h.svc.Kill(ctx, &taskapi.KillRequest{ID: "c1", Signal: 9, All: true})
	})
	for _, seed := range h.seeds(f) {
		f.Add(seed.method, seed.payload)
	}
	f.Fuzz(func(t *testing.T, method uint8, payload []byte) {
		name := methodNames[int(method)%len(methodNames)]
		h.call(t, name, payload)
		h.ensureContainer(t)
	})
}

var methodNames = []string{
	"State", "Create", "Start", "Delete", "Pids", "Pause", "Resume", "Checkpoint",
	"Kill", "Exec", "ResizePty", "CloseIO", "Update", "Wait", "Stats", "Connect", "Shutdown",
}

type fuzzHarness struct {
	svc     *Service
	methods map[string]ttrpc.Method
	guard   ttrpc.UnaryServerInterceptor
	dir     string
	bundle  string
	mu      sync.Mutex // fuzz workers call in parallel in one process
}

var (
	fuzzOnce    sync.Once
	fuzzShared  *fuzzHarness
	fuzzInitErr error
)

func newFuzzHarness(f *testing.F) *fuzzHarness {
	r := testReaper(f)
	fuzzOnce.Do(func() { fuzzShared, fuzzInitErr = buildFuzzHarness(r) })
	if fuzzInitErr != nil {
		f.Fatalf("fuzz harness: %v", fuzzInitErr)
	}
	return fuzzShared
}

func buildFuzzHarness(r *reaper.Reaper) (*fuzzHarness, error) {
	// The fuzz worker talks to its coordinator over inherited fds that are
	// not close-on-exec; the fake runtime's sleeps would keep them open
	// and hang the coordinator after the worker exits.
	for fd := 3; fd < 16; fd++ {
		unix.CloseOnExec(fd)
	}
	dir, err := os.MkdirTemp("", "keel-fuzz")
	if err != nil {
		return nil, err
	}
	rt, err := fakeruntime.Write(dir)
	if err != nil {
		return nil, err
	}
	// Short-lived, so that a fuzz worker killed mid-run leaves nothing for long.
	if err := rt.InitCommand("exec sleep 60"); err != nil {
		return nil, err
	}
	if err := rt.ExecCommand("exec sleep 60"); err != nil {
		return nil, err
	}
	bundle, err := fakeruntime.Bundle(dir, "c1", false)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := NewService("fuzz", log, r, NewPublisher("", "fuzz", log), &Options{Runc: &options.Options{BinaryName: rt.Binary, Root: rt.Root}}, func() {})
	return &fuzzHarness{svc: svc, methods: taskMethods(svc).Methods, guard: errorBoundary(log), dir: dir, bundle: bundle}, nil
}

type fuzzSeed struct {
	method  uint8
	payload []byte
}

func methodIndex(name string) uint8 {
	for i, n := range methodNames {
		if n == name {
			return uint8(i)
		}
	}
	panic(name)
}

// seeds are well-formed requests for every method, so that mutation
// starts from inputs that reach deep into the service.
func (h *fuzzHarness) seeds(f *testing.F) []fuzzSeed {
	spec := []byte(`{"args":["sleep","1"],"cwd":"/"}`)
	reqs := map[string]proto.Message{
		"State":      &taskapi.StateRequest{ID: "c1"},
		"Create":     &taskapi.CreateTaskRequest{ID: "c1", Bundle: h.bundle},
		"Start":      &taskapi.StartRequest{ID: "c1"},
		"Delete":     &taskapi.DeleteRequest{ID: "c1", ExecID: "e1"},
		"Pids":       &taskapi.PidsRequest{ID: "c1"},
		"Pause":      &taskapi.PauseRequest{ID: "c1"},
		"Resume":     &taskapi.ResumeRequest{ID: "c1"},
		"Checkpoint": &taskapi.CheckpointTaskRequest{ID: "c1", Path: "/tmp/x"},
		"Kill":       &taskapi.KillRequest{ID: "c1", ExecID: "e1", Signal: 9},
		"Exec":       &taskapi.ExecProcessRequest{ID: "c1", ExecID: "e1", Spec: anyJSON(spec)},
		"ResizePty":  &taskapi.ResizePtyRequest{ID: "c1", Width: 80, Height: 24},
		"CloseIO":    &taskapi.CloseIORequest{ID: "c1", Stdin: true},
		"Update":     &taskapi.UpdateTaskRequest{ID: "c1", Resources: anyJSON([]byte(`{"pids":{"limit":5}}`))},
		"Wait":       &taskapi.WaitRequest{ID: "c1", ExecID: "e1"},
		"Stats":      &taskapi.StatsRequest{ID: "c1"},
		"Connect":    &taskapi.ConnectRequest{ID: "c1"},
		"Shutdown":   &taskapi.ShutdownRequest{ID: "c1"},
	}
	var out []fuzzSeed
	for name, req := range reqs {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, fuzzSeed{methodIndex(name), b})
	}
	out = append(out, fuzzSeed{methodIndex("Create"), []byte{0xff, 0xff, 0xff}})
	return out
}

// call runs one request through the error boundary with a deadline.
func (h *fuzzHarness) call(t *testing.T, name string, payload []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	unmarshal := func(v any) error {
		if err := proto.Unmarshal(payload, v.(proto.Message)); err != nil {
			return err
		}
		h.confine(v)
		return nil
	}
	err := bounded(t, name, func() error {
		_, err := h.guard(ctx, unmarshal, &ttrpc.UnaryServerInfo{FullMethod: name}, h.methods[name])
		return err
	})
	// Every error has the kind the README promises: a panic is Internal,
	// an error nobody classified is Unknown; neither may reach containerd.
	if err != nil {
		switch native := errgrpc.ToNative(err); {
		case errdefs.IsInternal(native):
			t.Fatalf("%s panicked: %v", name, err)
		case errdefs.IsUnknown(native):
			t.Fatalf("%s failed without an errdefs kind: %v", name, err)
		}
	}
}

// bounded runs fn and fails the input, with every goroutine's stack, if
// fn does not return within 15 s: a wedged shim is a finding too.
func bounded(t *testing.T, what string, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		buf := make([]byte, 1<<20)
		buf = buf[:goruntime.Stack(buf, true)]
		t.Fatalf("%s did not return within 15 s; goroutines:\n%s", what, buf)
		return nil
	}
}

// confine keeps fuzzed requests' side effects inside the harness's dir.
func (h *fuzzHarness) confine(v any) {
	inDir := func(p string) string {
		if p == "" {
			return ""
		}
		scheme, rest, ok := strings.Cut(p, "://")
		if !ok {
			return filepath.Join(h.dir, "io", filepath.Clean("/"+p))
		}
		return scheme + "://" + filepath.Join(h.dir, "io", filepath.Clean("/"+rest))
	}
	switch r := v.(type) {
	case *taskapi.CreateTaskRequest:
		r.Rootfs = nil
		r.Checkpoint = ""
		r.Stdin, r.Stdout, r.Stderr = inDir(r.Stdin), inDir(r.Stdout), inDir(r.Stderr)
	case *taskapi.ExecProcessRequest:
		r.Stdin, r.Stdout, r.Stderr = inDir(r.Stdin), inDir(r.Stdout), inDir(r.Stderr)
	case *taskapi.CheckpointTaskRequest:
		r.Path = filepath.Join(h.dir, "ckpt")
		r.Options = nil
	case *taskapi.ShutdownRequest:
		r.Now = false
	}
}

// ensureContainer checks the service still answers for c1, creating it
// again if a fuzzed Delete removed it, so later inputs reach deep code.
func (h *fuzzHarness) ensureContainer(t *testing.T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := bounded(t, "State after the call", func() error {
		_, err := h.svc.State(ctx, &taskapi.StateRequest{ID: "c1"})
		return err
	})
	if err == nil {
		return
	}
	if !errdefs.IsNotFound(err) {
		t.Fatalf("State of c1 after a fuzzed call: %v", err)
	}
	h.svc.mu.Lock()
	h.svc.shutdown = false // a fuzzed Shutdown of an empty shim is legal
	h.svc.mu.Unlock()
	if err := bounded(t, "re-Create", func() error {
		_, err := h.svc.Create(ctx, &taskapi.CreateTaskRequest{ID: "c1", Bundle: h.bundle})
		return err
	}); err != nil {
		t.Fatalf("re-creating c1: %v", err)
	}
}

func anyJSON(b []byte) *anypb.Any {
	return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: b}
}
