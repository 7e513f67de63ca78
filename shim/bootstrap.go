package shim

import (
	"fmt"

	bootstrap "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// This file is the one place that knows how containerd generations differ
// when they start a shim:
//
//	containerd 1.6, 1.7, 2.0-2.2: stdin is empty or a protobuf Any of the
//	    runtime options; the reply is the socket address as plain text
//	    (2.0-2.2 also take JSON, but every generation parses the address).
//	containerd 2.3+: stdin is a protobuf BootstrapParams; the reply is a
//	    protobuf BootstrapResult, which also says Task API v3.

// TaskAPIVersion is the Task API version Keel announces to daemons that
// read a BootstrapResult. Both v2 and v3 are served on the socket anyway.
const TaskAPIVersion = 3

// Bootstrap is what the shim learns from containerd at start.
type Bootstrap struct {
	Modern       bool       // containerd 2.3+: reply with a BootstrapResult
	TTRPCAddress string     // containerd's ttrpc address, for events
	SocketDir    string     // where to put the socket; empty for the default
	Debug        bool       // the daemon logs at debug level or finer
	Options      *anypb.Any // runtime options, if any were sent
}

// ParseBootstrap reads the bytes containerd wrote on stdin. id and ns are
// the -id and -namespace flags; ttrpcEnv is $TTRPC_ADDRESS.
//
// Both a BootstrapParams and an Any start with a string in field 1, so the
// params are recognised by content: they name this instance and namespace.
func ParseBootstrap(stdin []byte, id, ns, ttrpcEnv string) (Bootstrap, error) {
	b := Bootstrap{TTRPCAddress: ttrpcEnv}
	if len(stdin) == 0 {
		return b, nil
	}
	var params bootstrap.BootstrapParams
	if err := proto.Unmarshal(stdin, &params); err == nil && isParams(&params, id, ns) {
		if params.GetInstanceID() != id || params.GetNamespace() != ns {
			return b, fmt.Errorf("bootstrap params are for %s/%s, not %s/%s",
				params.GetNamespace(), params.GetInstanceID(), ns, id)
		}
		b.Modern = true
		if a := params.GetContainerdTtrpcAddress(); a != "" {
			b.TTRPCAddress = a
		}
		b.SocketDir = params.GetSocketDir()
		b.Debug = params.GetLogLevel() < bootstrap.LogLevel_LOG_LEVEL_INFO
		// Extensions carry other configuration too (a pod's sandbox
		// config, NRI's): the runtime options are the one of their type.
		for _, ext := range params.GetExtensions() {
			if v := ext.GetValue(); b.Options == nil && isRuntimeOptions(v) {
				b.Options = v
			}
		}
		return b, nil
	}
	var opts anypb.Any
	if err := proto.Unmarshal(stdin, &opts); err != nil || opts.GetTypeUrl() == "" {
		return b, fmt.Errorf("stdin is neither BootstrapParams for %s/%s nor runtime options (%d bytes)", ns, id, len(stdin))
	}
	b.Options = &opts
	return b, nil
}

// Reply is what `start` prints for the daemon listening on address.
func (b Bootstrap) Reply(address string) ([]byte, error) {
	if !b.Modern {
		return []byte(address), nil
	}
	return proto.Marshal(&bootstrap.BootstrapResult{
		Version:  TaskAPIVersion,
		Address:  address,
		Protocol: "ttrpc",
	})
}

// isParams tells a BootstrapParams from an Any that decoded as one: an
// Any has only fields 1 and 2, so params that name this instance, or set
// any field beyond those, are params.
func isParams(p *bootstrap.BootstrapParams, id, ns string) bool {
	if p.GetInstanceID() == id && p.GetNamespace() == ns {
		return true
	}
	return p.GetContainerdVersion() != "" || p.GetContainerdTtrpcAddress() != "" ||
		p.GetContainerdGrpcAddress() != "" || p.GetContainerdBinary() != "" ||
		p.GetLogLevel() != 0 || len(p.GetExtensions()) > 0 || p.SocketDir != nil
}
