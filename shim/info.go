//go:build linux

package shim

import (
	"io"

	"github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
)

// Version is Keel's version; release builds set it with -ldflags -X.
var Version = "0.1.0-dev"

// RuntimeName is the name containerd knows Keel by.
const RuntimeName = "io.containerd.keel.v2"

// Info writes the raw RuntimeInfo protobuf that containerd asks for with
// `-info`. stdin may carry runtime options; they are echoed back.
func Info(stdin io.Reader, stdout io.Writer) error {
	info := &types.RuntimeInfo{
		Name:    RuntimeName,
		Version: &types.RuntimeVersion{Version: Version},
	}
	if in, err := io.ReadAll(stdin); err == nil && len(in) > 0 {
		if b, err := ParseBootstrap(in, "", "", ""); err == nil && b.Options != nil {
			info.Options = b.Options
		}
	}
	out, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}
