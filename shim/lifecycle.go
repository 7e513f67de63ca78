//go:build linux

// Package shim is Keel's lifecycle (start, serve, delete) and its Task
// API service.
package shim

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keel-shim/keel/process"
	"github.com/keel-shim/keel/process/cgroup"
	"github.com/keel-shim/keel/process/reaper"
	"github.com/keel-shim/keel/runtime"
)

// Flags are the shim's command line, as containerd passes it.
type Flags struct {
	Namespace     string
	ID            string
	Address       string // containerd's gRPC address
	PublishBinary string
	Bundle        string // delete only; otherwise the working directory
	Debug         bool
	Socket        string // serve only: the socket `start` made
}

const (
	// optionsEnv carries runtime options from `start` to the daemon.
	optionsEnv = "KEEL_RUNTIME_OPTIONS"
	// eventFlushTimeout bounds how long a stopping shim tries to deliver
	// the events it still owes.
	eventFlushTimeout = 30 * time.Second
	// spoolReplayTimeout bounds how long `delete` tries to deliver what a
	// dead shim left undelivered: containerd waits for it.
	spoolReplayTimeout = 2 * time.Second
)

// Start launches the shim daemon for the group of f.ID, or finds the one
// already serving it, and writes the reply containerd expects to stdout.
// Nothing else may reach stdout or stderr: containerd parses them.
func Start(f Flags, stdin io.Reader, stdout io.Writer) error {
	in, err := io.ReadAll(stdin)
	if err != nil {
		return fmt.Errorf("read bootstrap: %w", err)
	}
	b, err := ParseBootstrap(in, f.ID, f.Namespace, os.Getenv("TTRPC_ADDRESS"))
	if err != nil {
		return err
	}
	bundle, err := os.Getwd() // containerd starts the shim in the bundle
	if err != nil {
		return err
	}
	path := SocketPath(b.SocketDir, f.Address, f.Namespace, groupID(bundle, f.ID))
	address := SocketAddress(path)
	l, err := Listen(path)
	switch {
	case errors.Is(err, errInUse):
		// The group's shim is running: it serves this container too.
	case err != nil:
		return fmt.Errorf("listen on %s: %w", path, err)
	default:
		err = spawnDaemon(f, b, path, l)
		l.Close()
		if err != nil {
			os.Remove(path)
			return err
		}
	}
	// containerd 1.x reads it back after a restart.
	if err := os.WriteFile(filepath.Join(bundle, "address"), []byte(address), 0o600); err != nil {
		return err
	}
	reply, err := b.Reply(address)
	if err != nil {
		return err
	}
	_, err = stdout.Write(reply)
	return err
}

// spawnDaemon re-executes the shim as a detached daemon that inherits the
// listening socket as fd 3. Its own process group keeps it alive when
// containerd, or whatever signals containerd's group, goes away.
func spawnDaemon(f Flags, b Bootstrap, socket string, l *net.UnixListener) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	lf, err := l.File()
	if err != nil {
		return err
	}
	defer lf.Close()
	args := []string{"-namespace", f.Namespace, "-id", f.ID, "-address", f.Address,
		"-publish-binary", f.PublishBinary, "-socket", socket}
	if f.Debug || b.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, append(args, "serve")...)
	cmd.Env = append(daemonEnv(os.Environ()), "TTRPC_ADDRESS="+b.TTRPCAddress)
	if score, err := readOOMScoreAdj(os.Getppid()); err == nil {
		cmd.Env = append(cmd.Env, parentOOMScoreEnv+"="+strconv.Itoa(score))
	}
	if b.Options != nil {
		raw, err := proto.Marshal(b.Options)
		if err != nil {
			return err
		}
		cmd.Env = append(cmd.Env, optionsEnv+"="+base64.StdEncoding.EncodeToString(raw))
	}
	cmd.ExtraFiles = []*os.File{lf}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start shim daemon: %w", err)
	}
	defer cmd.Process.Release()
	// ShimCgroup: the daemon is accounted where the operator asked, as
	// containerd's runc shim does it, before it starts any container.
	if opts, err := runtimeOptions(b.Options, nil); err != nil {
		_ = cmd.Process.Kill()
		return err
	} else if g := opts.Runc.GetShimCgroup(); g != "" {
		if err := cgroup.AddProcess(cgroup.DefaultRoot, g, cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill()
			return fmt.Errorf("move shim to cgroup %s: %w", g, err)
		}
	}
	return nil
}

// groupID names the shim a container belongs to: containers that carry
// the same group annotation (a Kubernetes pod's sandbox ID, or an explicit
// group) share one shim process.
func groupID(bundle, id string) string {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return id
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if json.Unmarshal(data, &spec) != nil {
		return id
	}
	for _, key := range []string{"io.containerd.keel.v2.group", "io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"} {
		if g := spec.Annotations[key]; g != "" && validateID(g) == nil {
			return g
		}
	}
	return id
}

// Serve runs the daemon until containerd shuts down its last container.
func Serve(f Flags) error {
	log := newLogger(f)
	tuneDaemon(log)
	r, err := reaper.New()
	if err != nil {
		return err
	}
	inherited := os.NewFile(3, "socket")
	l, err := net.FileListener(inherited)
	// FileListener keeps a close-on-exec dup; fd 3 itself, inherited
	// without that flag, would reach every runtime and logger the shim
	// starts.
	inherited.Close()
	if err != nil {
		return fmt.Errorf("inherited socket: %w", err)
	}
	// `start` made the file just now; it is ours until we remove it.
	socket, err := ownSocket(f.Socket)
	if err != nil {
		return err
	}
	defaults, err := daemonOptions()
	if err != nil {
		return err
	}
	events := NewPublisher(os.Getenv("TTRPC_ADDRESS"), f.Namespace, log)
	stop := make(chan struct{})
	svc := NewService(f.Namespace, log, r, events, defaults, func() { close(stop) })
	srv, err := NewServer(svc, log)
	if err != nil {
		return err
	}
	go func() {
		if err := srv.Serve(context.Background(), l); err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			log.Error("serve", "error", err)
		}
	}()
	usr1 := make(chan os.Signal, 1) // a stack dump, from the loop below
	signal.Notify(usr1, syscall.SIGUSR1)
	if f.Debug {
		if debugSocket, err := listenProfiles(f, log); err != nil {
			log.Warn("pprof socket", "error", err)
		} else {
			defer debugSocket.remove()
		}
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	log.Info("serving", "socket", f.Socket, "pid", os.Getpid())
wait:
	for {
		select {
		case <-stop:
			break wait
		case sig := <-term:
			// Containers keep running; their exits are containerd's to
			// learn from `delete` and the records in their bundles.
			log.Warn("stopping on a signal", "signal", sig)
			break wait
		case <-usr1:
			dumpStacks(log)
		}
	}

	// Free the socket for a successor (if it is still ours: a `start` for
	// the same group may have replaced it), stop taking calls, letting a
	// Shutdown reply go out, then deliver every event still owed.
	socket.remove()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = srv.Shutdown(ctx)
	cancel()
	events.Close(eventFlushTimeout)
	log.Info("exiting")
	return nil
}

// listenProfiles serves profiles where `ctr shim --id ID pprof` looks.
func listenProfiles(f Flags, log *slog.Logger) (socketFile, error) {
	bundle, err := os.Getwd() // the first container's bundle, as for start
	if err != nil {
		return socketFile{}, err
	}
	path := DebugSocketPath(f.Address, f.Namespace, groupID(bundle, f.ID))
	l, err := Listen(path)
	if err != nil {
		return socketFile{}, err
	}
	own, err := ownSocket(path)
	if err != nil {
		l.Close()
		return socketFile{}, err
	}
	go serveProfiles(l, log)
	log.Debug("serving pprof", "socket", path)
	return own, nil
}

// daemonOptions decodes the runtime options `start` received.
func daemonOptions() (*Options, error) {
	enc := os.Getenv(optionsEnv)
	if enc == "" {
		return nil, nil
	}
	raw, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return nil, err
	}
	var a anypb.Any
	if err := proto.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	return runtimeOptions(&a, nil)
}

// newLogger logs to the "log" FIFO containerd opened in the bundle, so the
// shim's lines appear in containerd's log. The FIFO becomes the daemon's
// stderr too: a panic outside a request handler, or anything else the Go
// runtime prints as it dies, reaches containerd's log instead of nowhere.
func newLogger(f Flags) *slog.Logger {
	level := slog.LevelInfo
	if f.Debug {
		level = slog.LevelDebug
	}
	var w io.Writer = io.Discard
	if openLogFIFO("log", int(os.Stderr.Fd()), 5*time.Second) == nil {
		w = os.Stderr
		// While containerd is away the FIFO has no reader, and Go kills a
		// process whose write to fd 2 fails with EPIPE unless SIGPIPE is
		// handled. Handled, not ignored: an ignored signal would stay
		// ignored in the runtime and the containers the shim starts.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	}
	h := slog.NewTextHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: containerdStyle})
	return slog.New(h).With("shim", "keel", "namespace", f.Namespace)
}

// openLogFIFO opens the FIFO at path for writing, as fd. containerd opens
// its reading end before it runs `start`, so a non-blocking open finds
// the reader at once: a few system calls on the way to serving the first
// request. Only without a reader yet (ENXIO) does it wait for one, at
// most timeout, through the fifo package. Either way writes block, as to
// any pipe.
func openLogFIFO(path string, fd int, timeout time.Duration) error {
	f, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENXIO) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err = fifo.OpenFifoDup2(ctx, path, syscall.O_WRONLY, 0o700, fd)
		return err
	}
	if err != nil {
		return err
	}
	defer unix.Close(f)
	if err := unix.SetNonblock(f, false); err != nil {
		return err
	}
	return unix.Dup2(f, fd)
}

// containerdStyle makes log lines look like containerd's own (logrus's
// logfmt): `time=... level=info msg=...`, levels in lower case, so that a
// filter on containerd's log (level=error) catches the shim's lines too.
func containerdStyle(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.LevelKey:
		level, _ := a.Value.Any().(slog.Level)
		name := "info"
		switch {
		case level < slog.LevelInfo:
			name = "debug"
		case level >= slog.LevelError:
			name = "error"
		case level >= slog.LevelWarn:
			name = "warning"
		}
		return slog.String(slog.LevelKey, name)
	case slog.TimeKey:
		return slog.String(slog.TimeKey, a.Value.Time().UTC().Format(time.RFC3339Nano))
	}
	return a
}

// Delete cleans up after a dead shim: containerd runs it in the bundle. It
// removes the container from the runtime, unmounts its rootfs and prints
// the exit containerd should record: the init's own, if the shim recorded
// it before dying, or that of an init killed by the forced delete.
func Delete(f Flags, stdout, stderr io.Writer) error {
	bundle := f.Bundle
	if bundle == "" {
		var err error
		if bundle, err = os.Getwd(); err != nil {
			return err
		}
	}
	if err := validateID(f.ID); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// containerd runs this after every shim, also one that deleted its
	// container itself: then there is nothing to ask the runtime.
	if cfg, saved := loadRuntimeConfig(bundle, f.Namespace); saved {
		rt := runtime.New(cfg, runtime.ExecRunner{})
		if err := rt.Delete(ctx, f.ID, true); err != nil && !errdefs.IsNotFound(err) {
			// Warnings go to stderr, which containerd logs; the cleanup goes on.
			fmt.Fprintf(stderr, "keel: %v\n", err)
		}
	}
	if err := process.UnmountAll(filepath.Join(bundle, "rootfs")); err != nil {
		return err
	}
	removeStaleSocket(bundle)
	// The dead shim's pprof socket too, if it served one (debug level).
	removeIfStale(DebugSocketPath(f.Address, f.Namespace, groupID(bundle, f.ID)))
	if err := replaySpool(os.Getenv("TTRPC_ADDRESS"), f.Namespace, bundle, f.ID, spoolReplayTimeout); err != nil {
		fmt.Fprintf(stderr, "keel: %v\n", err)
	}
	// The init's real exit if the dead shim recorded one; otherwise the
	// force-delete above killed it.
	resp := &taskapi.DeleteResponse{ExitedAt: timestamppb.Now(), ExitStatus: 128 + uint32(syscall.SIGKILL),
		Pid: uint32(process.InitPid(bundle))}
	if e, ok := process.LoadExit(bundle); ok {
		resp = &taskapi.DeleteResponse{Pid: uint32(e.Pid), ExitStatus: uint32(e.Status), ExitedAt: timestamppb.New(e.Time)}
	}
	out, err := proto.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// dumpStacks logs every goroutine's stack, as Serve does on SIGUSR1, to
// debug a wedged shim without stopping it. It collects garbage and returns
// free memory to the kernel first, so that the RSS seen next is what is
// live: the leak tests (make test-stress) rely on that. The heap figures
// are read before the buffer for the stacks is made, so that they are the
// live heap too; the buffer grows only as far as the stacks need.
func dumpStacks(log *slog.Logger) {
	debug.FreeOSMemory()
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	buf := make([]byte, 64<<10)
	for {
		n := goruntime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	log.Info("goroutines", "count", goruntime.NumGoroutine(), "heap_alloc", ms.HeapAlloc,
		"heap_sys", ms.HeapSys, "stacks_sys", ms.StackSys, "stacks", string(buf))
}

// removeStaleSocket removes the socket of the dead shim that served the
// bundle, named in the address file `start` wrote, unless a live shim
// still serves it (other containers of its group).
func removeStaleSocket(bundle string) {
	data, err := os.ReadFile(filepath.Join(bundle, "address"))
	if err != nil {
		return
	}
	if path := socketPathOf(strings.TrimSpace(string(data))); filepath.IsAbs(path) {
		removeIfStale(path)
	}
}

// removeIfStale removes the socket at path unless a live shim serves it.
func removeIfStale(path string) {
	if serving(path) {
		return
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
}
