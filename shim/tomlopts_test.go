package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"

	bootstrap "github.com/containerd/containerd/api/runtime/bootstrap/v1"

	"github.com/keel-shim/keel/process/stdio"
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
	if o.Runc.BinaryName != "runc" || o.Output != (stdio.OutputBuffer{Size: 4 << 20, DropOldest: true}) {
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
		"[BinaryName]\nx = 1",                  // a table, not a string
		"IoUid = 4294967296",
		"IoUid = 1.5",
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

// The runc options tables `containerd config default` writes, as the CRI
// marshals them for a runtime that is not runc's (1.7 with go-toml v1,
// 2.x with go-toml v2). Switching only runtime_type to Keel must work.
var stockOptionsTables = map[string]string{
	"1.7": `BinaryName = ""
CriuImagePath = ""
CriuPath = ""
CriuWorkPath = ""
IoGid = 0
IoUid = 0
NoNewKeyring = false
NoPivotRoot = false
Root = ""
ShimCgroup = ""
SystemdCgroup = false
`,
	"2.x": `BinaryName = ''
CriuImagePath = ''
CriuWorkPath = ''
IoGid = 0
IoUid = 0
NoNewKeyring = false
NoPivotRoot = false
Root = ''
ShimCgroup = ''
SystemdCgroup = true
TaskApiAddress = ''
TaskApiVersion = 0
`,
}

func TestStockOptionsTables(t *testing.T) {
	for version, body := range stockOptionsTables {
		a, err := typeurl.MarshalAnyToProto(criOptions(t, body))
		if err != nil {
			t.Fatal(err)
		}
		o, err := runtimeOptions(a, nil)
		if err != nil {
			t.Errorf("containerd %s's stock runc options: %v", version, err)
			continue
		}
		if want := version == "2.x"; o.Runc.SystemdCgroup != want {
			t.Errorf("containerd %s: SystemdCgroup = %v, want %v", version, o.Runc.SystemdCgroup, want)
		}
	}
}

// TestOptionsAreTOML: the body is TOML, not key = value lines.
func TestOptionsAreTOML(t *testing.T) {
	body := `# Keel on this node
BinaryName = 'C:\not\escaped'   # a literal string, and a comment after it
CriuPath = """
/usr/local/sbin/criu"""
OutputBufferSize = 1_048_576
"SystemdCgroup" = true
`
	a, err := typeurl.MarshalAnyToProto(criOptions(t, body))
	if err != nil {
		t.Fatal(err)
	}
	o, err := runtimeOptions(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Runc.BinaryName != `C:\not\escaped` || !o.Runc.SystemdCgroup || o.Output.Size != 1<<20 || o.CriuPath != "/usr/local/sbin/criu" {
		t.Errorf("decoded %v, output %+v, CriuPath %q", o.Runc, o.Output, o.CriuPath)
	}
}

// TestUnknownOptionNamed: the error names the key, and is InvalidArgument.
func TestUnknownOptionNamed(t *testing.T) {
	a, err := typeurl.MarshalAnyToProto(criOptions(t, "BinaryName = 'runc'\nNoSuchThing = 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = runtimeOptions(a, nil)
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), `"NoSuchThing"`) {
		t.Errorf("err = %v, want InvalidArgument naming NoSuchThing", err)
	}
}
