//go:build linux

package integration

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The benchmarks compare Keel with containerd's reference shim,
// containerd-shim-runc-v2 of the same containerd version built as containerd
// releases build it (bench_ref_test.go), driven by one
// daemon in the same run. They report numbers (ReportMetric) and never assert
// timings; integration/cmd/benchsum turns `go test -bench` output into a
// table of medians and Keel/runc ratios.
//
// Environment:
//
//	KEEL_BENCH_VERSIONS=1.6,2.4  containerd versions to benchmark (default 2.4)
//	KEEL_BENCH_ROUNDS=5          rounds of keel,runc,keel,runc... (default 1)
//
// Go runs the -count repetitions of one sub-benchmark back to back (all of
// keel, then all of runc), so a drift of the machine during the run (page
// cache, writeback, a noisy neighbour on a 2-core VM) would land on one
// runtime only. KEEL_BENCH_ROUNDS alternates instead: every round runs /keel
// and /runc, in turn first, which Go names keel, runc, runc#01, keel#01, ...;
// benchsum folds the #NN suffixes back together. `make bench` uses -count 1 and 5 rounds.

// benchRuntime is one side of a comparison.
type benchRuntime struct {
	Name    string // sub-benchmark name: "keel" or "runc"
	Runtime string // runtime name given to containerd
	Binary  string // the shim executable containerd must end up running
}

func benchVersions() []string {
	if v := os.Getenv("KEEL_BENCH_VERSIONS"); v != "" {
		return strings.Split(v, ",")
	}
	return []string{"2.4"}
}

func benchRounds(b *testing.B) int {
	v := os.Getenv("KEEL_BENCH_ROUNDS")
	if v == "" {
		return 1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("KEEL_BENCH_ROUNDS=%q: want a positive integer", v)
	}
	return n
}

// forEachBenchVersion runs fn as sub-benchmarks "2.4" (and "1.6", ...), each
// with its own private containerd that serves both runtimes.
func forEachBenchVersion(b *testing.B, fn func(b *testing.B, d *Daemon, rts []benchRuntime)) {
	for _, v := range benchVersions() {
		b.Run(v, func(b *testing.B) {
			d, rts := startBenchDaemon(b, v)
			fn(b, d, rts)
		})
	}
}

// alternate runs fn for every runtime in turn, KEEL_BENCH_ROUNDS times,
// reversing the order every other round (keel, runc; runc, keel; ...), so
// that neither always runs first, right after a warm-up or a GC of the
// daemon, nor always runs second, with the other's page cache and dirty
// pages still around.
func alternate(b *testing.B, rts []benchRuntime, fn func(b *testing.B, rt benchRuntime)) {
	rounds := benchRounds(b)
	for r := 0; r < rounds; r++ {
		order := slices.Clone(rts)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, rt := range order {
			b.Run(rt.Name, func(b *testing.B) { fn(b, rt) })
		}
	}
}

// startBenchDaemon starts containerd `version` and checks that both shims are
// there and really run: a missing or broken reference shim fails the
// benchmark instead of leaving a report with Keel's numbers only.
func startBenchDaemon(b *testing.B, version string) (*Daemon, []benchRuntime) {
	b.Helper()
	requireSetup(b)
	if runtimeName() != defaultRuntime {
		b.Fatalf("KEEL_TEST_RUNTIME=%s: the benchmarks always compare Keel with the reference shim; unset it", runtimeName())
	}
	bin, err := binDir(version)
	if err != nil {
		b.Fatal(err)
	}
	keel := benchRuntime{Name: "keel", Runtime: defaultRuntime, Binary: filepath.Join(shimDir, "containerd-shim-keel-v2")}
	refBin, refRuntime := refShim(b, version)
	runc := benchRuntime{Name: "runc", Runtime: refRuntime, Binary: refBin}
	for _, p := range []string{filepath.Join(bin, "containerd"), filepath.Join(bin, "ctr"), keel.Binary, runc.Binary} {
		if _, err := os.Stat(p); err != nil {
			b.Fatalf("benchmark of containerd %s needs %s: %v (run scripts/install-deps.sh)", version, p, err)
		}
	}
	d := StartContainerd(b, version)
	setBenchLogLevel(b, d)
	rts := []benchRuntime{keel, runc}
	// One container per runtime: warms both up (first exec of each binary,
	// image and snapshot caches) and proves that each runtime name makes
	// containerd run the binary we mean to measure.
	for _, rt := range rts {
		id := d.NewID("warm-" + rt.Name)
		if out, err := d.ctrQuiet(2*time.Minute, "run", "-d", "--runtime", rt.Runtime, imageRef, id, "sleep", "60"); err != nil {
			b.Fatalf("%s shim (%s) cannot run a container on containerd %s: %v\n%s", rt.Name, rt.Runtime, version, err, out)
		}
		task := d.WaitStatus(b, id, "RUNNING")
		shim := d.benchShimOf(b, rt, id, task.Pid)
		d.removeBenchTask(b, id, shim)
		b.Logf("containerd %s: %s runs %s (pid %d, %s)", version, rt.Runtime, rt.Binary, shim, buildKind(rt.Binary))
	}
	return d, rts
}

// setBenchLogLevel restarts d at KEEL_BENCH_LOG_LEVEL (default info, as
// containerd ships and runs under systemd) instead of the debug level the
// tests use: at debug containerd starts every shim with -debug, which makes
// each serve profiles on a second socket (containerd-shim-runc-v2 through
// net/http) and log more, and so measures neither shim as users run it.
func setBenchLogLevel(b *testing.B, d *Daemon) {
	b.Helper()
	level := os.Getenv("KEEL_BENCH_LOG_LEVEL")
	if level == "" {
		level = "info"
	}
	if level == "debug" {
		return
	}
	cfg := filepath.Join(d.Dir, "config.toml")
	data, err := os.ReadFile(cfg)
	if err != nil {
		b.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	table, done := "", false
	for i, line := range lines {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			table = t
			continue
		}
		if k, _, ok := strings.Cut(t, "="); ok && table == "[debug]" && strings.TrimSpace(k) == "level" {
			lines[i] = fmt.Sprintf("  level = %q", level)
			done = true
		}
	}
	if !done {
		b.Fatalf("%s has no [debug] level to set", cfg)
	}
	if err := os.WriteFile(cfg, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		b.Fatal(err)
	}
	d.Restart(b, false, 0)
	b.Logf("containerd %s restarted at log level %s (KEEL_BENCH_LOG_LEVEL)", d.Version, level)
}

// benchShimOf returns the shim parenting the task's init process, after
// checking that it serves container id of d and that its executable is
// rt.Binary (same file, not just the same name).
func (d *Daemon) benchShimOf(b testing.TB, rt benchRuntime, id string, initPid int) int {
	b.Helper()
	st, err := readStat(initPid)
	if err != nil {
		b.Fatalf("init process %d of %s: %v", initPid, id, err)
	}
	pid := st.Ppid
	args := cmdline(pid)
	var gotID, gotAddr bool
	for i := 0; i+1 < len(args); i++ {
		gotID = gotID || (args[i] == "-id" && args[i+1] == id)
		gotAddr = gotAddr || (args[i] == "-address" && args[i+1] == d.Address)
	}
	if len(args) == 0 || filepath.Base(args[0]) != filepath.Base(rt.Binary) || !gotID || !gotAddr {
		b.Fatalf("parent %d of init %d is not the %s shim of %s: cmdline %q", pid, initPid, rt.Name, id, args)
	}
	exe, err1 := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
	want, err2 := os.Stat(rt.Binary)
	if err1 != nil || err2 != nil || !os.SameFile(exe, want) {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		b.Fatalf("%s shim %d runs %s, want %s (%v, %v)", rt.Name, pid, link, rt.Binary, err1, err2)
	}
	return pid
}

// removeBenchTask kills and deletes container id and waits for its shim
// to exit, so that it cannot share pages with, or take CPU from, what the
// next measurement starts.
func (d *Daemon) removeBenchTask(b testing.TB, id string, shim int) {
	b.Helper()
	if out, err := d.ctrQuiet(time.Minute, "task", "kill", "-s", "SIGKILL", id); err != nil {
		b.Fatalf("kill %s: %v\n%s", id, err, out)
	}
	d.WaitStatus(b, id, "STOPPED")
	for _, args := range [][]string{{"task", "rm", id}, {"containers", "rm", id}} {
		if out, err := d.ctrQuiet(time.Minute, args...); err != nil {
			b.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	waitExited(b, shim)
}

func waitExited(b testing.TB, pid int) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !exited(pid) {
		if time.Now().After(deadline) {
			b.Fatalf("shim %d still running 10s after its container was deleted", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procKB reads "Key:   123 kB" style fields of a /proc file (smaps_rollup,
// status); fields without a unit (Threads) are returned as they are.
func procKB(path string, keys ...string) (map[string]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || !slices.Contains(keys, k) {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %v", path, k, err)
		}
		out[k] = n
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, k := range keys {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("%s has no %s", path, k)
		}
	}
	return out, nil
}

// cpuSeconds is utime+stime of every thread of pid (not of its children).
// ctxSwitches is the number of context switches of pid's threads, and of
// the whole machine (/proc/stat's ctxt): a copy that wakes its reader or
// its writer for every few kilobytes shows there first.
func ctxSwitches(pid int) (shim, all int, err error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		return 0, 0, fmt.Errorf("no threads of %d: %v", pid, err)
	}
	for _, t := range tasks {
		kv, err := procKB(t, "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
		if err != nil {
			return 0, 0, err
		}
		shim += int(kv["voluntary_ctxt_switches"] + kv["nonvoluntary_ctxt_switches"])
	}
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(stat), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ctxt" {
			all, err = strconv.Atoi(f[1])
		}
	}
	return shim, all, err
}

func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat: %q", pid, s)
	}
	// After "pid (comm)": field 3 (state) is rest[0], so utime (14) and
	// stime (15) are rest[11] and rest[12].
	rest := strings.Fields(s[end+1:])
	if len(rest) < 13 {
		return 0, fmt.Errorf("bad /proc/%d/stat: %q", pid, s)
	}
	ut, err1 := strconv.ParseUint(rest[11], 10, 64)
	st, err2 := strconv.ParseUint(rest[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad /proc/%d/stat: %q", pid, s)
	}
	return float64(ut+st) / float64(clockTicks()), nil
}

// clockTicks is sysconf(_SC_CLK_TCK), the unit of /proc/PID/stat times,
// which the kernel hands every process in its auxiliary vector (AT_CLKTCK).
// Go has no sysconf without cgo; 100 is the value on every Linux we know.
func clockTicks() uint64 {
	const atClkTck = 17
	if b, err := os.ReadFile("/proc/self/auxv"); err == nil {
		for i := 0; i+16 <= len(b); i += 16 {
			if binary.NativeEndian.Uint64(b[i:]) == atClkTck {
				if v := binary.NativeEndian.Uint64(b[i+8:]); v > 0 {
					return v
				}
			}
		}
	}
	return 100
}

// binarySizes returns the file size of an executable and the bytes of it
// that get mapped (the PT_LOAD segments). The second does not depend on
// whether symbols and DWARF were stripped (Keel's `make build` and the
// release-style reference of bench_ref_test.go are, and so is Debian's 1.6
// shim).
func binarySizes(path string) (file, load int64, err error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	f, err := elf.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			load += int64(p.Filesz)
		}
	}
	return st.Size(), load, nil
}

// elfStripped says whether an executable has no symbol table (-s).
func elfStripped(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return f.Section(".symtab") == nil, nil
}

// buildKind describes how an executable was built, for the log: static or
// dynamic, stripped or not.
func buildKind(path string) string {
	f, err := elf.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	kind := "static"
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			kind = "dynamic"
		}
	}
	if f.Section(".symtab") == nil {
		kind += ", stripped"
	} else {
		kind += ", with symbols"
	}
	return kind
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}
