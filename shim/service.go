//go:build linux

package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keel-shim/keel/process"
	"github.com/keel-shim/keel/process/reaper"
	"github.com/keel-shim/keel/process/stdio"
	"github.com/keel-shim/keel/runtime"
)

// Service is the Task API of one shim daemon, serving every container of
// its group. The ttrpc layer (server.go) adapts it to v2 and v3 and turns
// its errdefs errors into status codes.
type Service struct {
	ns         string
	log        *slog.Logger
	reaper     *reaper.Reaper
	events     *Publisher
	defaults   *Options // runtime options from the bootstrap, if any
	onShutdown func()

	mu         sync.Mutex
	containers map[string]*process.Container         // guarded by mu
	creating   map[string]*taskapi.CreateTaskRequest // guarded by mu; being created
	shutdown   bool                                  // guarded by mu

	// exitEvents holds, for each process whose exit was published and
	// that is not deleted yet, that event's place in the publishing order
	// (Publisher.Publish).
	exitsMu    sync.Mutex
	exitEvents map[*process.Process]uint64 // guarded by exitsMu
}

var empty = &emptypb.Empty{}

// waitSyncTimeout bounds how long Wait holds an exit back for the events
// before it to be delivered: enough for a reconnect and its settle delay.
const waitSyncTimeout = settleDelay + forwardTimeout

// NewService returns the task service. onShutdown is called once, when
// containerd asks an empty shim to shut down.
func NewService(ns string, log *slog.Logger, r *reaper.Reaper, events *Publisher, defaults *Options, onShutdown func()) *Service {
	return &Service{
		ns: ns, log: log, reaper: r, events: events, defaults: defaults, onShutdown: onShutdown,
		containers: make(map[string]*process.Container),
		creating:   make(map[string]*taskapi.CreateTaskRequest),
		exitEvents: make(map[*process.Process]uint64),
	}
}

func (s *Service) container(id string) (*process.Container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.containers[id]; ok {
		return c, nil
	}
	if err := validateID(id); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
}

func (s *Service) process(id, execID string) (*process.Process, error) {
	c, err := s.container(id)
	if err != nil {
		return nil, err
	}
	return c.Process(execID)
}

// Create creates a container. The registry lock is not held while the
// runtime works: only the ID is reserved.
func (s *Service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (*taskapi.CreateTaskResponse, error) {
	if err := validateID(r.ID); err != nil {
		return nil, err
	}
	if err := validateBundle(r.Bundle, r.ID); err != nil {
		return nil, err
	}
	opts, err := runtimeOptions(r.Options, s.defaults)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.containers[r.ID] != nil || s.creating[r.ID] != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	if s.shutdown {
		s.mu.Unlock()
		return nil, fmt.Errorf("shim is shutting down: %w", errdefs.ErrFailedPrecondition)
	}
	s.creating[r.ID] = r
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.creating, r.ID)
		s.mu.Unlock()
	}()

	spec, err := process.LoadSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	rtCfg := runtimeConfig(opts, s.ns, r.Bundle, spec.CgroupsPath)
	if err := saveRuntimeConfig(r.Bundle, rtCfg); err != nil {
		return nil, err
	}
	mounts := make([]process.Mount, 0, len(r.Rootfs))
	for _, m := range r.Rootfs {
		mounts = append(mounts, process.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	c, err := process.Create(ctx, process.Config{
		ID: r.ID, Bundle: r.Bundle, Namespace: s.ns, Rootfs: mounts, Checkpoint: r.Checkpoint,
		Stdio:   stdio.Request{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		NoPivot: opts.Runc.NoPivotRoot, NoNewKeyring: opts.Runc.NoNewKeyring,
		IoUID: int(opts.Runc.IoUid), IoGID: int(opts.Runc.IoGid), Output: opts.Output, Spec: spec,
	}, process.Deps{Runtime: runtime.New(rtCfg, s.reaper), Reaper: s.reaper, Observer: s, Log: s.log})
	if err != nil {
		return nil, err
	}
	pid := c.Init().Status().Pid
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	logFrom(ctx, s.log).Info("created", "id", r.ID, "pid", pid)
	return &taskapi.CreateTaskResponse{Pid: uint32(pid)}, nil
}

// Created publishes the TaskCreate of a container Create is making, before
// anything else of it can be published.
func (s *Service) Created(c *process.Container, st process.Status) {
	s.mu.Lock()
	r := s.creating[c.ID]
	s.mu.Unlock()
	if r == nil {
		return
	}
	s.events.Publish(r.Bundle, TopicCreate, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Checkpoint: r.Checkpoint, Pid: uint32(st.Pid),
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
}

// Transitioned publishes a pause or a resume.
func (s *Service) Transitioned(c *process.Container, op process.Op) {
	switch op {
	case process.OpPause:
		s.events.Publish(c.Bundle, TopicPaused, &eventstypes.TaskPaused{ContainerID: c.ID})
	case process.OpResume:
		s.events.Publish(c.Bundle, TopicResumed, &eventstypes.TaskResumed{ContainerID: c.ID})
	}
}

// Checkpointed publishes a checkpoint that was written.
func (s *Service) Checkpointed(c *process.Container, imagePath string) {
	s.events.Publish(c.Bundle, TopicCheckpoint, &eventstypes.TaskCheckpointed{ContainerID: c.ID, Checkpoint: imagePath})
}

func (s *Service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	return &taskapi.StartResponse{Pid: uint32(p.Status().Pid)}, nil
}

// Started is the process.Observer half that publishes start events; it is
// called in order with the exits.
func (s *Service) Started(c *process.Container, p *process.Process, st process.Status) {
	pid := uint32(st.Pid)
	if p.IsInit() {
		s.events.Publish(c.Bundle, TopicStart, &eventstypes.TaskStart{ContainerID: c.ID, Pid: pid})
		return
	}
	s.events.Publish(c.Bundle, TopicExecStarted, &eventstypes.TaskExecStarted{ContainerID: c.ID, ExecID: p.ExecID, Pid: pid})
}

// Exited publishes a TaskExit. The process package calls it for the init
// only after every exec exit of the container.
func (s *Service) Exited(c *process.Container, p *process.Process, st process.Status) {
	id := p.ExecID
	if p.IsInit() {
		id = c.ID
	}
	seq := s.events.Publish(c.Bundle, TopicExit, &eventstypes.TaskExit{
		ContainerID: c.ID, ID: id, Pid: uint32(st.Pid),
		ExitStatus: uint32(st.ExitStatus), ExitedAt: timestamppb.New(st.ExitedAt),
	})
	if seq > 0 {
		s.exitsMu.Lock()
		s.exitEvents[p] = seq
		s.exitsMu.Unlock()
	}
	s.log.Info("exited", "id", c.ID, "exec", p.ExecID, "pid", st.Pid, "status", st.ExitStatus)
}

func (s *Service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, err := p.Delete(ctx)
	if err != nil {
		return nil, err
	}
	s.forgetExits(p)
	resp := &taskapi.DeleteResponse{Pid: uint32(st.Pid), ExitStatus: uint32(st.ExitStatus), ExitedAt: timestamppb.New(st.ExitedAt)}
	if p.IsInit() {
		// The runtime has deleted the container: the `delete` containerd
		// runs after this shim exits need not run the runtime again.
		if err := dropRuntimeConfig(p.Container().Bundle); err != nil {
			logFrom(ctx, s.log).Warn("remove the runtime config of a deleted container", "id", r.ID, "error", err)
		}
		s.mu.Lock()
		delete(s.containers, r.ID)
		s.mu.Unlock()
		// Not spooled: containerd removes the bundle once Delete returns.
		s.events.Publish("", TopicDelete, &eventstypes.TaskDelete{
			ContainerID: r.ID, Pid: resp.Pid, ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt,
		})
		logFrom(ctx, s.log).Info("deleted", "id", r.ID)
	}
	return resp, nil
}

func (s *Service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	if err := validateID(r.ExecID); err != nil {
		return nil, err
	}
	if r.Spec == nil || len(r.Spec.Value) == 0 {
		return nil, fmt.Errorf("exec %q has no process spec: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	stdio := stdio.Request{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	if _, err := c.AddExec(r.ExecID, r.Spec.Value, stdio); err != nil {
		return nil, err
	}
	s.events.Publish(c.Bundle, TopicExecAdded, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return empty, nil
}

func (s *Service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st := p.Status()
	id := r.ExecID
	if id == "" {
		id = r.ID
	}
	return &taskapi.StateResponse{
		ID: id, ExecID: r.ExecID, Bundle: p.Container().Bundle, Pid: uint32(st.Pid),
		Status: taskStatus(st.State),
		Stdin:  p.Stdio.Stdin, Stdout: p.Stdio.Stdout, Stderr: p.Stdio.Stderr, Terminal: p.Stdio.Terminal,
		ExitStatus: uint32(st.ExitStatus), ExitedAt: exitedAt(st),
	}, nil
}

func taskStatus(s process.State) task.Status {
	switch s {
	case process.Created:
		return task.Status_CREATED
	case process.Running:
		return task.Status_RUNNING
	case process.Paused:
		return task.Status_PAUSED
	case process.Stopped, process.Deleted:
		return task.Status_STOPPED
	}
	return task.Status_UNKNOWN
}

func exitedAt(st process.Status) *timestamppb.Timestamp {
	if st.ExitedAt.IsZero() {
		return nil
	}
	return timestamppb.New(st.ExitedAt)
}

func (s *Service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if st := c.Init().Status(); st.State == process.Stopped {
		// The exited init, not an empty list: containerd 2.x, reloading
		// after a restart, deletes the task of a shim that lists no pids
		// (2.2 even when Pids fails), and the exit status of a container
		// that exited while containerd was away would be lost. Listed, the
		// task stays STOPPED until deleted, with its status.
		return &taskapi.PidsResponse{Processes: []*task.ProcessInfo{{Pid: uint32(st.Pid)}}}, nil
	}
	pids, err := c.Pids(ctx)
	if err != nil {
		return nil, err
	}
	execByPid := make(map[int]string)
	for _, p := range c.Execs() {
		if st := p.Status(); st.Pid > 0 {
			execByPid[st.Pid] = p.ExecID
		}
	}
	resp := &taskapi.PidsResponse{}
	for _, pid := range pids {
		info := &task.ProcessInfo{Pid: uint32(pid)}
		if execID, ok := execByPid[pid]; ok {
			if a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: execID}); err == nil {
				info.Info = a
			}
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

func (s *Service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if err := c.Init().Pause(ctx); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if err := c.Init().Resume(ctx); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Signal == 0 || r.Signal > 64 {
		return nil, fmt.Errorf("signal %d: %w", r.Signal, errdefs.ErrInvalidArgument)
	}
	if r.All && !p.IsInit() {
		return nil, fmt.Errorf("kill --all applies to the container, not exec %q: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	if err := p.Kill(ctx, syscall.Signal(r.Signal), r.All); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Service) CloseIO(ctx context.Context, r *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		p.CloseStdin()
	}
	return empty, nil
}

func (s *Service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, err := p.Wait(ctx)
	if err != nil {
		return nil, err
	}
	// What was published before the exit (an OOM) reaches containerd's
	// event service before the caller hears of the exit here: the CRI
	// gives an OOM-killed container the reason OOMKilled only if the OOM
	// event came first. The exit's own event need not: containerd learns
	// of the exit from Wait or from it, whichever comes first. Bounded: a
	// wedged event service must not withhold the exit.
	sctx, cancel := context.WithTimeout(ctx, waitSyncTimeout)
	s.exitsMu.Lock()
	seq, published := s.exitEvents[p]
	s.exitsMu.Unlock()
	if published {
		_ = s.events.SyncTo(sctx, seq-1)
	} else {
		_ = s.events.Sync(sctx)
	}
	cancel()
	return &taskapi.WaitResponse{ExitStatus: uint32(st.ExitStatus), ExitedAt: exitedAt(st)}, nil
}

// forgetExits drops the exit events recorded for p, a deleted process,
// and for a deleted init those of its container's exec processes too.
func (s *Service) forgetExits(p *process.Process) {
	ps := []*process.Process{p}
	if p.IsInit() {
		ps = append(ps, p.Container().Execs()...)
	}
	s.exitsMu.Lock()
	for _, p := range ps {
		delete(s.exitEvents, p)
	}
	s.exitsMu.Unlock()
}

func (s *Service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	resp := &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "keel"}
	if c, err := s.container(r.ID); err == nil {
		resp.TaskPid = uint32(c.Init().Status().Pid)
	}
	return resp, nil
}

// Shutdown stops the shim once it serves no container; otherwise it is a
// no-op, since other containers of the group still need it.
func (s *Service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	if len(s.containers) > 0 || len(s.creating) > 0 || s.shutdown {
		s.mu.Unlock()
		return empty, nil
	}
	s.shutdown = true
	s.mu.Unlock()
	s.log.Info("shutting down")
	go s.onShutdown()
	return empty, nil
}

func (s *Service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.ResizePty(r.Width, r.Height); err != nil {
		return nil, err
	}
	return empty, nil
}

// Checkpoint dumps the container with CRIU into r.Path. The runtime's
// own error (CRIU's, on a kernel it cannot handle) reaches the caller.
func (s *Service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if !filepath.IsAbs(r.Path) {
		return nil, fmt.Errorf("checkpoint path %q must be absolute: %w", r.Path, errdefs.ErrInvalidArgument)
	}
	var opts options.CheckpointOptions
	if r.Options != nil && len(r.Options.Value) > 0 {
		if err := proto.Unmarshal(r.Options.Value, &opts); err != nil {
			return nil, fmt.Errorf("checkpoint options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	imagePath := r.Path
	if opts.ImagePath != "" {
		imagePath = opts.ImagePath
	}
	// CRIU writes its log (dump.log) in the work path: keep it in the
	// bundle unless told otherwise, and name it in the error.
	workPath := opts.WorkPath
	if workPath == "" {
		workPath = c.Bundle
	}
	err = c.Checkpoint(ctx, runtime.CheckpointOpts{
		ImagePath: imagePath, WorkPath: workPath, LeaveRunning: !opts.Exit,
		AllowOpenTCP: opts.OpenTcp, AllowExternalUnix: opts.ExternalUnixSockets,
		AllowTerminal: opts.Terminal, FileLocks: opts.FileLocks,
		EmptyNamespaces: opts.EmptyNamespaces, CgroupsMode: opts.CgroupsMode,
	})
	if err != nil {
		return nil, fmt.Errorf("%w (CRIU's log: %s)", err, filepath.Join(workPath, "dump.log"))
	}
	return empty, nil
}

func (s *Service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Resources == nil || len(r.Resources.Value) == 0 {
		return nil, fmt.Errorf("update of %q has no resources: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	if !json.Valid(r.Resources.Value) {
		return nil, fmt.Errorf("update of %q: resources are not OCI LinuxResources JSON: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	if err := c.Update(ctx, r.Resources.Value); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	metrics, err := c.Stats()
	if err != nil {
		return nil, err
	}
	a, err := typeurl.MarshalAnyToProto(metrics)
	if err != nil {
		return nil, err
	}
	return &taskapi.StatsResponse{Stats: a}, nil
}

// OOM publishes a TaskOOM when the kernel's OOM killer acted in c.
func (s *Service) OOM(c *process.Container) {
	s.events.Publish(c.Bundle, TopicOOM, &eventstypes.TaskOOM{ContainerID: c.ID})
	s.log.Info("oom", "id", c.ID)
}
