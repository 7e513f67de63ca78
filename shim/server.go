//go:build linux

package shim

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// Task API v2 and v3 differ only in their protobuf package name: the
// messages are the same on the wire. One method table, built over the v2
// Go types (whose package does not pull in gRPC), is served under both
// names, so one implementation answers every containerd generation.
var taskServiceNames = []string{"containerd.task.v2.Task", "containerd.task.v3.Task"}

// NewServer returns a ttrpc server for s: only peers of the shim's own
// user may connect, errors leave as status codes, and a panic in a
// handler becomes an Internal error instead of killing every container's
// shim.
func NewServer(s *Service, log *slog.Logger) (*ttrpc.Server, error) {
	srv, err := ttrpc.NewServer(
		ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()),
		ttrpc.WithUnaryServerInterceptor(errorBoundary(log)),
	)
	if err != nil {
		return nil, err
	}
	desc := taskMethods(s)
	for _, name := range taskServiceNames {
		srv.RegisterService(name, desc)
	}
	return srv, nil
}

// errorBoundary is the one place where errors become gRPC status codes.
func errorBoundary(log *slog.Logger) ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (resp any, err error) {
		ctx = withTrace(ctx, log)
		log := logFrom(ctx, log)
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
				resp, err = nil, fmt.Errorf("%s: internal error: %v: %w", info.FullMethod, r, errdefs.ErrInternal)
			}
			if err != nil {
				log.Debug("request failed", "method", info.FullMethod, "error", err)
				err = errgrpc.ToGRPC(err)
			}
		}()
		return m(ctx, u)
	}
}

// method adapts a typed handler to ttrpc's untyped Method.
func method[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](h func(context.Context, PReq) (Resp, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(any) error) (any, error) {
		req := PReq(new(Req))
		if err := unmarshal(req); err != nil {
			return nil, fmt.Errorf("malformed request: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		return h(ctx, req)
	}
}

func taskMethods(s *Service) *ttrpc.ServiceDesc {
	return &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"State":      method[taskapi.StateRequest](s.State),
		"Create":     method[taskapi.CreateTaskRequest](s.Create),
		"Start":      method[taskapi.StartRequest](s.Start),
		"Delete":     method[taskapi.DeleteRequest](s.Delete),
		"Pids":       method[taskapi.PidsRequest](s.Pids),
		"Pause":      method[taskapi.PauseRequest](s.Pause),
		"Resume":     method[taskapi.ResumeRequest](s.Resume),
		"Checkpoint": method[taskapi.CheckpointTaskRequest](s.Checkpoint),
		"Kill":       method[taskapi.KillRequest](s.Kill),
		"Exec":       method[taskapi.ExecProcessRequest](s.Exec),
		"ResizePty":  method[taskapi.ResizePtyRequest](s.ResizePty),
		"CloseIO":    method[taskapi.CloseIORequest](s.CloseIO),
		"Update":     method[taskapi.UpdateTaskRequest](s.Update),
		"Wait":       method[taskapi.WaitRequest](s.Wait),
		"Stats":      method[taskapi.StatsRequest](s.Stats),
		"Connect":    method[taskapi.ConnectRequest](s.Connect),
		"Shutdown":   method[taskapi.ShutdownRequest](s.Shutdown),
	}}
}
