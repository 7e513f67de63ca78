//go:build linux

package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	"github.com/keel-shim/keel/process/cgroup"
	"github.com/keel-shim/keel/process/reaper"
	"github.com/keel-shim/keel/process/stdio"
	"github.com/keel-shim/keel/runtime"
)

// Observer hears of lifecycle changes in the order they happen: it is
// called with the process's lock held (so it gets the status as an
// argument, and must not block or call back into the process), and a
// container's Created comes before anything else of it can be reported.
// This is the one path events take, so their order is the order of the
// changes.
type Observer interface {
	Created(c *Container, st Status)
	Started(c *Container, p *Process, st Status)
	// Transitioned reports a pause or a resume of the container.
	Transitioned(c *Container, op Op)
	Checkpointed(c *Container, imagePath string)
	Exited(c *Container, p *Process, st Status)
	OOM(c *Container)
}

// Config describes a container to create.
type Config struct {
	ID, Bundle   string
	Namespace    string
	Rootfs       []Mount // mounted on Bundle/rootfs; none for a ready rootfs
	Checkpoint   string  // a CRIU image to restore at Start, instead of create
	Stdio        stdio.Request
	NoPivot      bool
	NoNewKeyring bool
	IoUID, IoGID int // owner of the stdio pipes; 0 keeps root
	Output       stdio.OutputBuffer
	Spec         Spec // from the bundle's config.json (LoadSpec)
}

// Deps are the shim-wide services a container uses.
type Deps struct {
	Runtime  *runtime.Runtime
	Reaper   *reaper.Reaper
	Observer Observer
	Log      *slog.Logger
}

// Container is one container: its init process and its exec processes.
type Container struct {
	ID, Bundle string

	ioCfg        stdio.Config
	rt           *runtime.Runtime
	reaper       *reaper.Reaper
	obs          Observer
	log          *slog.Logger
	init         *Process
	cg           *cgroup.Cgroup // nil if it could not be found
	stopOOM      func()
	mounted      bool   // rootfs mounts are ours to unmount
	restoreFrom  string // checkpoint image the init is restored from at Start
	noPivot      bool
	noNewKeyring bool
	sharedPidNS  bool // no pid namespace of its own: kill leftovers on exit
	seq          atomic.Uint64

	execs struct {
		mu         sync.Mutex
		byID       map[string]*Process // guarded by mu
		initExited bool                // guarded by mu; refuses new execs
		running    sync.WaitGroup      // started execs not yet reported exited
	}
}

// Create mounts the rootfs, sets up stdio and creates the container in the
// runtime. Its init process is Created, waiting for Start.
func Create(ctx context.Context, cfg Config, d Deps) (_ *Container, err error) {
	c := &Container{
		ID: cfg.ID, Bundle: cfg.Bundle, rt: d.Runtime, reaper: d.Reaper, obs: d.Observer,
		restoreFrom: cfg.Checkpoint, noPivot: cfg.NoPivot, noNewKeyring: cfg.NoNewKeyring,
		sharedPidNS: cfg.Spec.SharedPidNS, log: d.Log,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("id", cfg.ID)
	c.ioCfg = stdio.Config{
		ContainerID: cfg.ID, Namespace: cfg.Namespace, UID: cfg.IoUID, GID: cfg.IoGID,
		Buffer: cfg.Output, Reaper: d.Reaper, Log: d.Log,
	}
	c.execs.byID = make(map[string]*Process)
	rootfs := filepath.Join(cfg.Bundle, "rootfs")
	if len(cfg.Rootfs) > 0 {
		if err := MountAll(cfg.Rootfs, rootfs); err != nil {
			return nil, err
		}
		c.mounted = true
		defer func() {
			if err != nil {
				c.logErr("unmount rootfs after a failed create", UnmountAll(rootfs))
			}
		}()
	}
	io, err := stdio.New(ctx, cfg.Stdio, c.ioCfg)
	if err != nil {
		return nil, err
	}
	c.init = newProcess(c, "", cfg.Stdio)
	c.init.state, c.init.io = Created, io
	if c.restoreFrom != "" {
		// The runtime restores the checkpoint at Start.
		c.obs.Created(c, c.init.Status())
		return c, nil
	}
	l, err := c.launchInit(ctx, io, func(o runtime.CreateOpts) error { return c.rt.Create(ctx, c.ID, o) })
	if err != nil {
		io.Close()
		return nil, err
	}
	c.init.mu.Lock()
	c.init.launched(l)
	c.obs.Created(c, c.init.statusLocked())
	c.init.mu.Unlock()
	// Only now may the init's exit be reported: after its creation.
	go c.init.await(l.exits)
	c.watchCgroup(l.pid)
	return c, nil
}

// launchInit makes the init process through call, the runtime's create or
// restore. A runtime that failed half way may have left state behind: it
// is deleted.
func (c *Container) launchInit(ctx context.Context, io *stdio.IO, call func(runtime.CreateOpts) error) (launched, error) {
	pidFile := filepath.Join(c.Bundle, initPidFile)
	l, err := c.launch(io, pidFile, func() error {
		return call(runtime.CreateOpts{
			Bundle: c.Bundle, PidFile: pidFile, ConsoleSocket: io.ConsoleSocket(),
			NoPivot: c.noPivot, NoNewKeyring: c.noNewKeyring,
			Stdio: io.Child(),
		})
	})
	if err != nil {
		if derr := c.rt.Delete(context.WithoutCancel(ctx), c.ID, true); !errdefs.IsNotFound(derr) {
			c.logErr("delete after a failed create", derr)
		}
	}
	return l, err
}

// initPidFile is where the runtime writes the init's pid, in the bundle.
const initPidFile = "init.pid"

// InitPid is the pid the runtime gave the container's init, or 0: for
// `delete`, after the shim that knew it died.
func InitPid(bundle string) int {
	pid, _ := readPid(filepath.Join(bundle, initPidFile))
	return pid
}

// restore starts the init process from the checkpoint it was created
// with. Called by Start with the init's lock held.
func (c *Container) restore(ctx context.Context) error {
	p := c.init
	l, err := c.launchInit(ctx, p.io, func(o runtime.CreateOpts) error {
		return c.rt.Restore(ctx, c.ID, runtime.RestoreOpts{
			CheckpointOpts: runtime.CheckpointOpts{ImagePath: c.restoreFrom},
			CreateOpts:     o,
		})
	})
	if err != nil {
		return err
	}
	p.launched(l)
	go p.await(l.exits)
	c.watchCgroup(l.pid)
	return nil
}

// Checkpoint dumps the container with CRIU. Unless it leaves the
// container running, the container exits and that exit is reported.
func (c *Container) Checkpoint(ctx context.Context, o runtime.CheckpointOpts) error {
	p := c.init
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != Running && p.state != Paused {
		return fmt.Errorf("cannot checkpoint a %s container: %w", p.state, errdefs.ErrFailedPrecondition)
	}
	if err := c.rt.Checkpoint(ctx, c.ID, o); err != nil {
		return err
	}
	c.obs.Checkpointed(c, o.ImagePath)
	return nil
}

// watchCgroup finds the container's cgroup from its init and watches it
// for OOM kills. A container without one (a runtime that makes none) just
// has no metrics.
func (c *Container) watchCgroup(pid int) {
	cg, err := cgroup.ForPid(cgroup.DefaultRoot, pid)
	if err != nil {
		c.log.Debug("no cgroup: no metrics, no OOM events", "pid", pid, "error", err)
		return
	}
	c.cg = cg
	stop, err := cg.WatchOOM(func() { c.obs.OOM(c) })
	if err != nil {
		c.logErr("watch for OOM kills", err)
		return
	}
	c.stopOOM = stop
}

// logErr logs a failure that has no caller to return to.
func (c *Container) logErr(what string, err error) {
	if err != nil {
		c.log.Error(what, "error", err)
	}
}

// Stats returns the container's cgroup metrics.
func (c *Container) Stats() (proto.Message, error) {
	if c.cg == nil {
		return nil, fmt.Errorf("container %q has no cgroup: %w", c.ID, errdefs.ErrNotFound)
	}
	return c.cg.Stats()
}

// Update applies new resources, OCI LinuxResources JSON, through the runtime.
func (c *Container) Update(ctx context.Context, resources []byte) error {
	if _, err := next(c.init.Status().State, OpUpdate); err != nil {
		return err
	}
	return c.rt.Update(ctx, c.ID, resources)
}

// Init is the container's init process.
func (c *Container) Init() *Process { return c.init }

// Process returns the init process for "" or the exec process execID.
func (c *Container) Process(execID string) (*Process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.execs.mu.Lock()
	defer c.execs.mu.Unlock()
	if p, ok := c.execs.byID[execID]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("exec %q in container %q: %w", execID, c.ID, errdefs.ErrNotFound)
}

// AddExec registers an exec process to be started later. spec is its OCI
// process JSON.
func (c *Container) AddExec(execID string, spec []byte, req stdio.Request) (*Process, error) {
	if _, err := next(c.init.Status().State, OpExec); err != nil {
		return nil, err
	}
	spec, err := specWithTerminal(spec, req.Terminal)
	if err != nil {
		return nil, err
	}
	c.execs.mu.Lock()
	defer c.execs.mu.Unlock()
	if _, ok := c.execs.byID[execID]; ok {
		return nil, fmt.Errorf("exec %q in container %q: %w", execID, c.ID, errdefs.ErrAlreadyExists)
	}
	p := newProcess(c, execID, req)
	p.spec = spec
	c.execs.byID[execID] = p
	return p, nil
}

// specWithTerminal makes an exec's process spec say what the request
// says: containerd's Go client asks for a terminal in the request
// (cio.WithTerminal) and leaves the spec's "terminal" false, and a runtime
// given a console socket for a process without a terminal refuses it.
func specWithTerminal(spec []byte, terminal bool) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(spec, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("exec process spec is not a JSON object: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var was bool
	if raw, ok := fields["terminal"]; ok && json.Unmarshal(raw, &was) != nil {
		return nil, fmt.Errorf("exec process spec: terminal is %s, not a boolean: %w", raw, errdefs.ErrInvalidArgument)
	}
	if was == terminal {
		return spec, nil
	}
	fields["terminal"] = json.RawMessage(strconv.FormatBool(terminal))
	return json.Marshal(fields)
}

// Execs returns the exec processes.
func (c *Container) Execs() []*Process {
	c.execs.mu.Lock()
	defer c.execs.mu.Unlock()
	ps := make([]*Process, 0, len(c.execs.byID))
	for _, p := range c.execs.byID {
		ps = append(ps, p)
	}
	return ps
}

func (c *Container) removeExec(execID string) {
	c.execs.mu.Lock()
	delete(c.execs.byID, execID)
	c.execs.mu.Unlock()
}

// beginExec counts an exec as running, unless the init is gone: an exec
// must never start in a container whose init has been reaped.
func (c *Container) beginExec() error {
	c.execs.mu.Lock()
	defer c.execs.mu.Unlock()
	if c.execs.initExited {
		return fmt.Errorf("container %q has exited: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	c.execs.running.Add(1)
	return nil
}

// initExited refuses new execs and, where the container shares a pid
// namespace, kills what is left of it (the kernel does that for a
// container with its own).
func (c *Container) initExited() {
	c.execs.mu.Lock()
	c.execs.initExited = true
	c.execs.mu.Unlock()
	if c.sharedPidNS {
		err := c.rt.Kill(context.Background(), c.ID, syscall.SIGKILL, true)
		c.logErr("kill what is left of the container after its init exited", err)
	}
}

// deleteInit removes the container from the runtime and unmounts its
// rootfs. Called with the init's lock held.
func (c *Container) deleteInit(ctx context.Context, force bool) error {
	if err := c.rt.Delete(ctx, c.ID, force); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	if c.stopOOM != nil {
		c.stopOOM()
	}
	if c.mounted {
		return UnmountAll(filepath.Join(c.Bundle, "rootfs"))
	}
	return nil
}

// tempPath names a fresh file in the bundle for the runtime to write.
func (c *Container) tempPath(prefix, suffix string) string {
	return filepath.Join(c.Bundle, "."+prefix+"-"+strconv.FormatUint(c.seq.Add(1), 10)+suffix)
}

// Spec is what the shim reads from a bundle's OCI spec (config.json).
type Spec struct {
	// SharedPidNS: no pid namespace of its own, or one joined: the
	// container's leftovers must be killed when its init exits.
	SharedPidNS bool
	// CgroupsPath as the spec gives it; "slice:prefix:name" is the
	// systemd driver's form.
	CgroupsPath string
}

// LoadSpec reads the parts of the bundle's config.json the shim uses.
func LoadSpec(bundle string) (Spec, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Spec{}, fmt.Errorf("bundle %s has no config.json: %w", bundle, errdefs.ErrInvalidArgument)
		}
		return Spec{}, err
	}
	var spec struct {
		Linux *struct {
			CgroupsPath string `json:"cgroupsPath"`
			Namespaces  []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return Spec{}, fmt.Errorf("bundle config.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if spec.Linux == nil {
		return Spec{SharedPidNS: true}, nil
	}
	s := Spec{SharedPidNS: true, CgroupsPath: spec.Linux.CgroupsPath}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == "pid" {
			s.SharedPidNS = ns.Path != ""
		}
	}
	return s, nil
}

// Pids lists the pids of the container's processes.
func (c *Container) Pids(ctx context.Context) ([]int, error) {
	return c.rt.Ps(ctx, c.ID)
}
