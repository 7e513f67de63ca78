//go:build linux

package shim

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"time"
)

// Profiles on demand, as `ctr shim --id ID pprof goroutines|heap|profile|
// trace|block|threadcreate` asks containerd's shims for them: HTTP GETs of
// /debug/pprof/NAME on a second socket, served only when containerd runs
// at debug level. A few lines of HTTP/1.1 instead of net/http, which would
// grow every shim's binary and start-up for a tool used at 3 a.m.

// DebugSocketPath is where ctr looks for a shim's profiles: containerd's
// socket naming (the sha256 of its address, the namespace, the shim's ID
// and "debug") in the default socket directory.
func DebugSocketPath(containerdAddress, ns, id string) string {
	return SocketPath(DefaultSocketDir, containerdAddress, ns, filepath.Join(id, "debug"))
}

// maxProfileSeconds bounds a CPU profile or a trace.
const maxProfileSeconds = 300

// serveProfiles answers profile requests on l until it is closed.
func serveProfiles(l net.Listener, log *slog.Logger) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			if err := answerProfile(conn); err != nil {
				log.Debug("pprof request", "error", err)
			}
		}()
	}
}

// answerProfile reads one GET and writes the profile it names.
func answerProfile(conn net.Conn) error {
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	for { // the headers say nothing a profile needs
		h, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.TrimSpace(h) == "" {
			break
		}
	}
	method, target, _ := strings.Cut(strings.TrimSpace(line), " ")
	target, _, _ = strings.Cut(target, " ")
	u, err := url.ParseRequestURI(target)
	var name string
	ok := err == nil && method == "GET"
	if ok {
		name, ok = strings.CutPrefix(u.Path, "/debug/pprof/")
	}
	if !ok {
		return reply(conn, "404 Not Found", func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "not a pprof request: %q\n", line)
			return err
		})
	}
	q := u.Query()
	debug, _ := strconv.Atoi(q.Get("debug"))
	seconds, err := strconv.Atoi(q.Get("seconds"))
	if err != nil || seconds <= 0 {
		seconds = 30
	}
	seconds = min(seconds, maxProfileSeconds)
	switch name {
	case "profile":
		return reply(conn, "200 OK", func(w io.Writer) error {
			if err := pprof.StartCPUProfile(w); err != nil {
				return err
			}
			time.Sleep(time.Duration(seconds) * time.Second)
			pprof.StopCPUProfile()
			return nil
		})
	case "trace":
		return reply(conn, "200 OK", func(w io.Writer) error {
			if err := trace.Start(w); err != nil {
				return err
			}
			time.Sleep(time.Duration(seconds) * time.Second)
			trace.Stop()
			return nil
		})
	}
	p := pprof.Lookup(name)
	if p == nil {
		return reply(conn, "404 Not Found", func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "no profile %q\n", name)
			return err
		})
	}
	return reply(conn, "200 OK", func(w io.Writer) error { return p.WriteTo(w, debug) })
}

// reply writes a response whose body ends when the connection closes.
func reply(conn net.Conn, status string, body func(io.Writer) error) error {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Duration(maxProfileSeconds+30) * time.Second))
	w := bufio.NewWriter(conn)
	fmt.Fprintf(w, "HTTP/1.1 %s\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n", status)
	if err := body(w); err != nil {
		return err
	}
	return w.Flush()
}
