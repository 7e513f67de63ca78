// Package fakeruntime writes a fake OCI runtime for tests: a shell script
// with runc's command line whose container processes are plain child
// processes, and whose behaviour a test changes per subcommand while it
// runs. The process package's ordering tests and the shim's fuzz target
// both drive it, so that faults a real runc cannot be made to produce (an
// init that dies during create, a wedged kill) are one file away.
package fakeruntime

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// script is the runtime. Its state is in "state" next to it, whatever
// --root says (the shim adds the namespace to that).
// For each call it runs the hook file "<subcommand>.hook" in that
// directory first and "<subcommand>.post" last, if there are (sourced, so
// they can exit or change $init_cmd); "init.cmd" and "exec.cmd" hold the
// commands of the container's init and exec processes (default: a long
// sleep).
const script = `#!/bin/sh
root=$(dirname "$0")/state
while [ $# -gt 0 ]; do
	case "$1" in
	--root|--log|--log-format|--criu) shift 2 ;;
	--systemd-cgroup) shift ;;
	*) break ;;
	esac
done
cmd=$1; shift
pidfile=
all=
while [ $# -gt 1 ]; do
	case "$1" in
	--pid-file) pidfile=$2; shift 2 ;;
	--bundle|--console-socket|--process|--resources|--image-path|--work-path) shift 2 ;;
	--all) all=1; shift ;;
	*) shift ;;
	esac
done
echo "$cmd" >> "$root/calls"
init_cmd=$(cat "$root/init.cmd" 2>/dev/null || echo 'exec sleep 1000')
exec_cmd=$(cat "$root/exec.cmd" 2>/dev/null || echo 'exec sleep 1000')
[ -f "$root/$cmd.hook" ] && . "$root/$cmd.hook"
case $cmd in
create)
	# From a subshell that exits at once, so that, as a runtime's init,
	# the process is the subreaper's (the shim's) to reap, not this script's.
	( sh -c "$init_cmd" & echo $! > "$root/init" )
	cat "$root/init" >> "$root/pids"
	cp "$root/init" "$pidfile" ;;
exec)
	( sh -c "$exec_cmd" & echo $! > "$pidfile" )
	cat "$pidfile" >> "$root/pids" ;;
kill)
	sig=$1
	if [ -n "$all" ]; then
		for p in $(cat "$root/pids" 2>/dev/null); do kill -"$sig" "$p" 2>/dev/null; done
	else
		kill -"$sig" "$(cat "$root/init")" 2>/dev/null
	fi
	exit 0 ;;
delete)
	kill -9 "$(cat "$root/init" 2>/dev/null)" 2>/dev/null
	rm -f "$root/init" "$root/pids"
	exit 0 ;;
ps)
	echo "[$(cat "$root/init" 2>/dev/null || echo 0)]" ;;
start|pause|resume|update|checkpoint) exit 0 ;;
*)
	echo "{\"level\":\"error\",\"msg\":\"fake runtime: no $cmd\"}" > /dev/stderr
	exit 1 ;;
esac
[ -f "$root/$cmd.post" ] && . "$root/$cmd.post"
exit 0
`

// Runtime is a fake runtime binary and its state directory.
type Runtime struct {
	Binary string // the script; pass it as the runtime's binary
	Root   string // its state directory
}

// Write puts the fake runtime in dir.
func Write(dir string) (Runtime, error) {
	r := Runtime{Binary: filepath.Join(dir, "fake-runtime"), Root: filepath.Join(dir, "state")}
	if err := os.MkdirAll(r.Root, 0o700); err != nil {
		return r, err
	}
	return r, os.WriteFile(r.Binary, []byte(script), 0o755)
}

// Hook makes the next calls of subcommand cmd (create, kill, ...) run sh
// first; "" removes the hook. `exit N` in sh ends the call with status N.
func (r Runtime) Hook(cmd, sh string) error {
	return r.set(cmd+".hook", sh)
}

// Post makes the next calls of cmd run sh after their work is done (for
// create: the init runs and its pid file is written).
func (r Runtime) Post(cmd, sh string) error {
	return r.set(cmd+".post", sh)
}

// InitCommand sets the shell command the container's init runs.
func (r Runtime) InitCommand(sh string) error { return r.set("init.cmd", sh) }

// ExecCommand sets the shell command exec processes run.
func (r Runtime) ExecCommand(sh string) error { return r.set("exec.cmd", sh) }

func (r Runtime) set(name, content string) error {
	path := filepath.Join(r.Root, name)
	if content == "" {
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	}
	return os.WriteFile(path, []byte(content+"\n"), 0o600)
}

// Calls lists the subcommands run so far, in order.
func (r Runtime) Calls() []string {
	data, _ := os.ReadFile(filepath.Join(r.Root, "calls"))
	return strings.Fields(string(data))
}

// InitPid is the pid of the last init created, or 0.
func (r Runtime) InitPid() int {
	data, err := os.ReadFile(filepath.Join(r.Root, "init"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// Bundle writes a bundle for container id in dir: a config.json with a pid
// namespace of its own unless shared.
func Bundle(dir, id string, shared bool) (string, error) {
	bundle := filepath.Join(dir, id)
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return "", err
	}
	ns := `[{"type":"pid"}]`
	if shared {
		ns = `[]`
	}
	spec := fmt.Sprintf(`{"linux":{"namespaces":%s}}`, ns)
	return bundle, os.WriteFile(filepath.Join(bundle, "config.json"), []byte(spec), 0o600)
}
