//go:build linux

// Command containerd-shim-keel-v2 is the Keel containerd shim. containerd
// runs it as `start` (launch or find the daemon), `delete` (clean up after a
// dead daemon) and `-info`; `serve` is the daemon `start` launches.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/keel-shim/keel/shim"
)

func main() {
	var (
		f       shim.Flags
		version = flag.Bool("v", false, "print the version and exit")
		info    = flag.Bool("info", false, "print a RuntimeInfo protobuf and exit")
	)
	flag.StringVar(&f.Namespace, "namespace", "", "containerd namespace")
	flag.StringVar(&f.ID, "id", "", "container (or group) id")
	flag.StringVar(&f.Address, "address", "", "containerd's gRPC address")
	flag.StringVar(&f.PublishBinary, "publish-binary", "", "containerd binary (unused: events go over ttrpc)")
	flag.StringVar(&f.Bundle, "bundle", "", "bundle path (delete)")
	flag.BoolVar(&f.Debug, "debug", false, "log at debug level")
	flag.StringVar(&f.Socket, "socket", "", "socket path (serve, internal)")
	flag.Parse()

	var err error
	switch {
	case *version:
		fmt.Print(shim.ThisBuild())
		return
	case *info:
		err = shim.Info(os.Stdin, os.Stdout)
	case flag.Arg(0) == "start":
		err = shim.Start(f, os.Stdin, os.Stdout)
	case flag.Arg(0) == "delete":
		err = shim.Delete(f, os.Stdout, os.Stderr)
	case flag.Arg(0) == "serve":
		err = shim.Serve(f)
	default:
		err = fmt.Errorf("unknown action %q: want start, delete, serve, -v or -info", flag.Arg(0))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "containerd-shim-keel-v2: %v\n", err)
		os.Exit(1)
	}
}
