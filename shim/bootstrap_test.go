package shim

import (
	"bytes"
	"testing"

	bootstrap "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const (
	testID       = "c1"
	testNS       = "k8s.io"
	envTTRPC     = "/run/containerd/containerd.sock.ttrpc"
	paramsTTRPC  = "/run/other/containerd.sock.ttrpc"
	testSockDir  = "/run/k/s"
	testRuncName = "/usr/local/bin/crun"
)

func runcOptions() *options.Options {
	return &options.Options{BinaryName: testRuncName, Root: "/run/custom", SystemdCgroup: true}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// legacyStdin is what containerd 1.6-2.2 write: the runtime options as a
// marshalled Any. typeurl gives the bare message name as type URL, anypb
// the type.googleapis.com/ form; both must work.
func legacyStdin(t *testing.T, viaTypeurl bool) []byte {
	t.Helper()
	var a *anypb.Any
	var err error
	if viaTypeurl {
		a, err = typeurl.MarshalAnyToProto(runcOptions())
	} else {
		a, err = anypb.New(runcOptions())
	}
	if err != nil {
		t.Fatal(err)
	}
	return mustMarshal(t, a)
}

// modernStdin is what containerd 2.4 writes (core/runtime/v2/command.go).
func modernStdin(t *testing.T, level string, withOpts bool) []byte {
	t.Helper()
	dir := testSockDir
	p := &bootstrap.BootstrapParams{
		InstanceID:             testID,
		Namespace:              testNS,
		LogLevel:               bootstrap.LogLevelFromString(level),
		ContainerdVersion:      "v2.4.0",
		ContainerdGrpcAddress:  "/run/containerd/containerd.sock",
		ContainerdTtrpcAddress: paramsTTRPC,
		ContainerdBinary:       "/usr/bin/containerd",
		SocketDir:              &dir,
	}
	if withOpts {
		a, err := typeurl.MarshalAnyToProto(runcOptions())
		if err != nil {
			t.Fatal(err)
		}
		if err := p.AddExtension(a); err != nil {
			t.Fatal(err)
		}
	}
	return mustMarshal(t, p)
}

func TestParseBootstrap(t *testing.T) {
	tests := []struct {
		name      string
		stdin     []byte
		wantErr   bool
		modern    bool
		ttrpc     string
		socketDir string
		debug     bool
		withOpts  bool
	}{
		{name: "empty stdin (no runtime options)", stdin: nil, ttrpc: envTTRPC},
		{name: "legacy options via typeurl", stdin: legacyStdin(t, true), ttrpc: envTTRPC, withOpts: true},
		{name: "legacy options via anypb", stdin: legacyStdin(t, false), ttrpc: envTTRPC, withOpts: true},
		{name: "params debug", stdin: modernStdin(t, "debug", true), modern: true, ttrpc: paramsTTRPC, socketDir: testSockDir, debug: true, withOpts: true},
		{name: "params trace", stdin: modernStdin(t, "trace", true), modern: true, ttrpc: paramsTTRPC, socketDir: testSockDir, debug: true, withOpts: true},
		{name: "params info", stdin: modernStdin(t, "info", true), modern: true, ttrpc: paramsTTRPC, socketDir: testSockDir, withOpts: true},
		{name: "params warn", stdin: modernStdin(t, "warn", true), modern: true, ttrpc: paramsTTRPC, socketDir: testSockDir, withOpts: true},
		{name: "params without options", stdin: modernStdin(t, "info", false), modern: true, ttrpc: paramsTTRPC, socketDir: testSockDir},
		{name: "garbage text", stdin: []byte("garbage"), wantErr: true},
		{name: "garbage bytes", stdin: []byte{0xff, 0xff, 0xff, 0xff}, wantErr: true},
		{name: "truncated params", stdin: modernStdin(t, "debug", true)[:7], wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ParseBootstrap(tt.stdin, testID, testNS, envTTRPC)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseBootstrap(%q) = %+v, want an error", tt.stdin, b)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseBootstrap: %v", err)
			}
			if b.Modern != tt.modern || b.TTRPCAddress != tt.ttrpc || b.SocketDir != tt.socketDir || b.Debug != tt.debug {
				t.Errorf("got Modern=%v TTRPC=%q SocketDir=%q Debug=%v; want %v %q %q %v",
					b.Modern, b.TTRPCAddress, b.SocketDir, b.Debug, tt.modern, tt.ttrpc, tt.socketDir, tt.debug)
			}
			if !tt.withOpts {
				if b.Options != nil {
					t.Errorf("Options = %v, want none", b.Options)
				}
				return
			}
			if b.Options == nil {
				t.Fatal("Options not set")
			}
			opts, err := runtimeOptions(b.Options, nil)
			if err != nil {
				t.Fatalf("runtimeOptions: %v", err)
			}
			if !proto.Equal(opts.Runc, runcOptions()) {
				t.Errorf("decoded options %v, want %v", opts, runcOptions())
			}
		})
	}
}

func TestParseBootstrapParamsWithoutTTRPC(t *testing.T) {
	// Params that name no ttrpc address keep the one from the environment.
	stdin := mustMarshal(t, &bootstrap.BootstrapParams{InstanceID: testID, Namespace: testNS})
	b, err := ParseBootstrap(stdin, testID, testNS, envTTRPC)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Modern || b.TTRPCAddress != envTTRPC || b.SocketDir != "" || b.Debug {
		t.Errorf("got %+v; want Modern, env ttrpc address, no socket dir, not debug", b)
	}
}

func TestReply(t *testing.T) {
	const address = "unix:///run/containerd/s/0123abcd"

	legacy, err := Bootstrap{}.Reply(address)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(legacy, []byte(address)) {
		t.Errorf("legacy reply = %q, want exactly the address", legacy)
	}

	modern, err := Bootstrap{Modern: true}.Reply(address)
	if err != nil {
		t.Fatal(err)
	}
	var res bootstrap.BootstrapResult
	if err := proto.Unmarshal(modern, &res); err != nil {
		t.Fatalf("modern reply is not a BootstrapResult: %v", err)
	}
	if res.GetVersion() != 3 || res.GetProtocol() != "ttrpc" || res.GetAddress() != address {
		t.Errorf("BootstrapResult = %v; want version 3, protocol ttrpc, address %q", &res, address)
	}
}

// TestBootstrapOptionsByType: the runtime options are the extension of
// their type, wherever it stands among the others.
func TestBootstrapOptionsByType(t *testing.T) {
	other, err := anypb.New(&bootstrap.BootstrapResult{Address: "not options"})
	if err != nil {
		t.Fatal(err)
	}
	opts, err := typeurl.MarshalAnyToProto(runcOptions())
	if err != nil {
		t.Fatal(err)
	}
	p := &bootstrap.BootstrapParams{
		InstanceID: testID, Namespace: testNS, ContainerdVersion: "v2.4.0",
		Extensions: []*bootstrap.Extension{{Value: other}, {Value: opts}},
	}
	b, err := ParseBootstrap(mustMarshal(t, p), testID, testNS, envTTRPC)
	if err != nil {
		t.Fatal(err)
	}
	o, err := runtimeOptions(b.Options, nil)
	if err != nil || !proto.Equal(o.Runc, runcOptions()) {
		t.Fatalf("options %v, %v; want the runc options extension", o, err)
	}
}
