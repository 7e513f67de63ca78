//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// procStat is the part of /proc/PID/stat the tests need.
type procStat struct {
	Comm  string
	State byte // R, S, D, Z, ...
	Ppid  int
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	// comm is in parentheses and may itself hold spaces or ')'.
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("bad /proc/%d/stat: %q", pid, s)
	}
	rest := strings.Fields(s[end+1:])
	if len(rest) < 2 {
		return procStat{}, fmt.Errorf("bad /proc/%d/stat: %q", pid, s)
	}
	ppid, err := strconv.Atoi(rest[1])
	if err != nil {
		return procStat{}, err
	}
	return procStat{Comm: s[open+1 : end], State: rest[0][0], Ppid: ppid}, nil
}

// exited is true once pid is gone or a zombie: a shim that has exited stays
// a zombie until pid 1 (not an init on every machine) gets round to reaping it.
func exited(pid int) bool {
	st, err := readStat(pid)
	return err != nil || st.State == 'Z'
}

func allPids() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func cmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// descendants lists every process below pid (not pid itself).
func descendants(pid int) []int {
	children := map[int][]int{}
	for _, p := range allPids() {
		if st, err := readStat(p); err == nil {
			children[st.Ppid] = append(children[st.Ppid], p)
		}
	}
	var out []int
	queue := children[pid]
	for len(queue) > 0 {
		p := queue[0]
		queue = append(queue[1:], children[p]...)
		out = append(out, p)
	}
	return out
}

// isShimFor tells whether args are the command line of this runtime's shim
// serving container id of daemon d (containerd starts it with
// -namespace NS -id ID -address ADDR).
func (d *Daemon) isShimFor(args []string, id string) bool {
	if len(args) == 0 || filepath.Base(args[0]) != shimBinaryName() {
		return false
	}
	var gotID, gotAddr bool
	for i := 0; i+1 < len(args); i++ {
		gotID = gotID || (args[i] == "-id" && args[i+1] == id)
		gotAddr = gotAddr || (args[i] == "-address" && args[i+1] == d.Address)
	}
	return gotID && gotAddr
}

// ShimPids lists live shim processes for container id.
func (d *Daemon) ShimPids(id string) []int {
	var pids []int
	for _, pid := range allPids() {
		if d.isShimFor(cmdline(pid), id) && !exited(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ShimOf returns the shim that parents the task's init process, checking
// that it is this runtime's shim for that container.
func (d *Daemon) ShimOf(t testing.TB, id string, initPid int) int {
	t.Helper()
	st, err := readStat(initPid)
	if err != nil {
		t.Fatalf("init process %d of %s: %v", initPid, id, err)
	}
	if args := cmdline(st.Ppid); !d.isShimFor(args, id) {
		t.Fatalf("parent %d of init %d is not a %s for %s: cmdline %q", st.Ppid, initPid, shimBinaryName(), id, args)
	}
	return st.Ppid
}

// unixSockets returns the paths of the named unix sockets pid holds open,
// matching the socket inodes of its fds against /proc/net/unix.
func unixSockets(pid int) ([]string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var paths []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path
		fields := strings.Fields(sc.Text())
		if len(fields) == 8 && inodes[fields[6]] && strings.HasPrefix(fields[7], "/") {
			paths = append(paths, fields[7])
		}
	}
	return paths, sc.Err()
}
