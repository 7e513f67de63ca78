package shim

import (
	"os"
	"path/filepath"
	"testing"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"

	bootstrap "github.com/containerd/containerd/api/runtime/bootstrap/v1"

	"github.com/keel-shim/keel/process"
)

// criOptions is what the CRI plugin sends a runtime whose runtime_type is
// not io.containerd.runc.v2: the TOML of its options table.
func criOptions(t *testing.T, body string) *runtimeoptions.Options {
	t.Helper()
	return &runtimeoptions.Options{ConfigBody: []byte(body)}
}

func TestRuntimeOptionsFromCRITOML(t *testing.T) {
	body := "BinaryName = \"/usr/bin/crun\"\nSystemdCgroup = true\nIoUid = 1000\nio_gid = 1001\n# a comment\nShimCgroup = '/shims'\n"
	a, err := typeurl.MarshalAnyToProto(criOptions(t, body))
	if err != nil {
		t.Fatal(err)
	}
	o, err := runtimeOptions(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if opts := o.Runc; opts.BinaryName != "/usr/bin/crun" || !opts.SystemdCgroup || opts.IoUid != 1000 || opts.IoGid != 1001 || opts.ShimCgroup != "/shims" {
		t.Fatalf("decoded %v", opts)
	}
}

func TestRuntimeOptionsFromCRIConfigPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keel.toml")
	if err := os.WriteFile(path, []byte("NoPivotRoot = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	opts, err := runtimeOptions(a, nil)
	if err != nil || !opts.Runc.NoPivotRoot {
		t.Fatalf("runtimeOptions = %v, %v; want NoPivotRoot", opts, err)
	}
}

// TestOutputBufferFromTOML: Keel's own keys sit next to runc's.
func TestOutputBufferFromTOML(t *testing.T) {
	a, err := typeurl.MarshalAnyToProto(criOptions(t, "BinaryName = \"runc\"\nOutputBufferSize = 4194304\noutput_buffer_policy = \"drop-oldest\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	o, err := runtimeOptions(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Runc.BinaryName != "runc" || o.Output != (process.OutputBuffer{Size: 4 << 20, DropOldest: true}) {
		t.Fatalf("decoded %v and %+v", o.Runc, o.Output)
	}
}

func TestRuntimeOptionsFromCRITOMLRejects(t *testing.T) {
	for _, body := range []string{
		"NoSuchOption = 1",
		"SystemdCgroup = \"yes\"",
		"IoUid = -1",
		"BinaryName = unquoted",
		"just garbage",
		"OutputBufferSize = -1",
		"OutputBufferSize = 2147483648",
		"OutputBufferPolicy = \"drop-newest\"",
		"OutputBufferPolicy = \"drop-oldest\"", // without a size
	} {
		a, err := typeurl.MarshalAnyToProto(criOptions(t, body))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := runtimeOptions(a, nil); !errdefs.IsInvalidArgument(err) {
			t.Errorf("body %q: err = %v, want InvalidArgument", body, err)
		}
	}
}

// TestParseBootstrapForAnotherInstance: params that name another container
// are an error, not runtime options of a strange type.
func TestParseBootstrapForAnotherInstance(t *testing.T) {
	p := &bootstrap.BootstrapParams{InstanceID: "other", Namespace: testNS, ContainerdVersion: "v2.4.0"}
	in, err := proto.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := ParseBootstrap(in, testID, testNS, envTTRPC); err == nil {
		t.Fatalf("ParseBootstrap accepted params for another instance: %+v", b)
	}
}
