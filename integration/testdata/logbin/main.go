//go:build ignore

// logbin is a binary:// / binary-v2:// logging program for the integration
// tests (logger_test.go builds it with `go build -o`). The shim starts it with
// the container's stdout on fd 3, its stderr on fd 4 and a ready pipe on fd 5,
// and the log URI's query as arguments: ?dir=D&mode=M gives "dir D mode M" in
// some order, so the arguments are read as key/value pairs.
//
// It records what it was given in D (args, the CONTAINER_* variables and
// the size of its environment in env), signals readiness as mode
// says, copies fd 3 to D/stdout and fd 4 to D/stderr, and writes D/done once
// both reached EOF. Modes:
//
//	close   close fd 5 without writing (binary://)
//	byte    write one byte to fd 5, then close it (binary-v2://)
//	linger  as close, but after EOF stay until a SIGTERM (or 60 s)
//	exit    exit at once (status 3) without signalling
//	hang    never signal; sleep 60 s (a SIGTERM ends it)
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

func main() {
	opts := map[string]string{}
	for i := 1; i+1 < len(os.Args); i += 2 {
		opts[os.Args[i]] = os.Args[i+1]
	}
	dir := opts["dir"]
	if dir == "" {
		fmt.Fprintln(os.Stderr, "logbin: no dir argument:", os.Args)
		os.Exit(2)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fail(err)
	}
	args, _ := json.Marshal(os.Args)
	write(dir, "args", args)
	env, _ := json.Marshal(map[string]string{
		"CONTAINER_ID":        os.Getenv("CONTAINER_ID"),
		"CONTAINER_NAMESPACE": os.Getenv("CONTAINER_NAMESPACE"),
		"count":               fmt.Sprint(len(os.Environ())),
	})
	write(dir, "env", env)
	write(dir, "pid", []byte(fmt.Sprint(os.Getpid())))

	ready := os.NewFile(5, "ready")
	switch mode := opts["mode"]; mode {
	case "exit":
		os.Exit(3)
	case "hang":
		time.Sleep(60 * time.Second)
		os.Exit(0)
	case "close", "linger":
		ready.Close()
	case "byte":
		if _, err := ready.Write([]byte{1}); err != nil {
			fail(err)
		}
		ready.Close()
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}

	// Once ready, a SIGTERM is recorded but does not stop the copy: the
	// logger ends when the container's output does (EOF on fds 3 and 4),
	// or in mode linger at the first SIGTERM after that.
	sigs := make(chan os.Signal, 1)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		for s := range term {
			write(dir, "sigterm", []byte("1"))
			select {
			case sigs <- s:
			default:
			}
		}
	}()

	var wg sync.WaitGroup
	for fd, name := range map[uintptr]string{3: "stdout", 4: "stderr"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := os.NewFile(fd, name)
			dst, err := os.Create(filepath.Join(dir, name))
			if err != nil {
				fail(err)
			}
			if _, err := io.Copy(dst, src); err != nil {
				fail(err)
			}
			if err := dst.Close(); err != nil {
				fail(err)
			}
		}()
	}
	wg.Wait()
	write(dir, "done", []byte("1"))
	if opts["mode"] == "linger" {
		select {
		case <-sigs:
		case <-time.After(60 * time.Second):
		}
	}
}

// write creates dir/name atomically, so that a reader never sees it half written.
func write(dir, name string, data []byte) {
	tmp := filepath.Join(dir, "."+name)
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		fail(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "logbin:", err)
	os.Exit(1)
}
