//go:build linux

package shim

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keel-shim/keel/runtime"
)

// RuntimeName is the name containerd knows Keel by.
const RuntimeName = "io.containerd.keel.v2"

// featuresTypeURL is how containerd registers the OCI runtime features
// type (JSON-encoded) with typeurl.
const featuresTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"

// Info writes the raw RuntimeInfo protobuf containerd asks for with
// `-info`: Keel's version, the runtime options it was given on stdin, and
// the OCI runtime's features where the runtime reports them.
func Info(stdin io.Reader, stdout io.Writer) error {
	build := ThisBuild()
	info := &types.RuntimeInfo{
		Name:    RuntimeName,
		Version: &types.RuntimeVersion{Version: build.Version, Revision: build.Revision},
	}
	in, err := io.ReadAll(stdin)
	if err != nil {
		return err
	}
	b, err := ParseBootstrap(in, "", "", "")
	if err != nil {
		return err
	}
	opts, err := runtimeOptions(b.Options, nil)
	if err != nil {
		return err
	}
	info.Options = b.Options
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rt := runtime.New(runtime.Config{Binary: opts.Runc.GetBinaryName(), Root: os.TempDir(), LogDir: os.TempDir()}, runtime.ExecRunner{})
	if feat, err := rt.Features(ctx); err == nil {
		info.Features = &anypb.Any{TypeUrl: featuresTypeURL, Value: feat}
	}
	out, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}
