//go:build linux

package cgroup

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
)

// The machine's own cgroups stay as they are: these tests read fixture
// trees laid out as the kernel lays out /sys/fs/cgroup, in both modes.

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const procCgroupV2 = "0::/kubepods/pod1/ctr\n"

const procCgroupV1 = `9:name=systemd:/default/ctr
8:pids:/default/ctr
4:memory:/default/ctr
2:cpuacct:/default/ctr
1:cpu:/default/ctr
0::/
`

func v2Fixture(t *testing.T) string {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"cgroup.controllers":                       "cpu memory pids io",
		"kubepods/pod1/ctr/pids.current":           "3\n",
		"kubepods/pod1/ctr/pids.max":               "max\n",
		"kubepods/pod1/ctr/cpu.stat":               "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 10\nnr_throttled 2\nthrottled_usec 700\n",
		"kubepods/pod1/ctr/memory.current":         "1048576\n",
		"kubepods/pod1/ctr/memory.max":             "20971520\n",
		"kubepods/pod1/ctr/memory.peak":            "2097152\n",
		"kubepods/pod1/ctr/memory.swap.current":    "0\n",
		"kubepods/pod1/ctr/memory.swap.max":        "max\n",
		"kubepods/pod1/ctr/memory.stat":            "anon 4096\nfile 8192\nkernel_stack 16384\npgfault 77\nnot_a_field 1\n",
		"kubepods/pod1/ctr/memory.events":          "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n",
		"kubepods/pod1/ctr/io.stat":                "8:0 rbytes=100 wbytes=200 rios=3 wios=4 dbytes=0 dios=0\n",
		"kubepods/pod1/ctr/cgroup.procs":           "",
		"kubepods/pod1/ctr/memory.swap.peak":       "0\n",
		"kubepods/pod1/ctr/memory.pressure":        "",
		"kubepods/pod1/ctr/cgroup.events":          "populated 1\n",
		"kubepods/pod1/ctr/cgroup.type":            "domain\n",
		"kubepods/pod1/ctr/cgroup.max.descendants": "max\n",
	})
	return root
}

func TestStatsV2(t *testing.T) {
	root := v2Fixture(t)
	cg, err := parse(root, []byte(procCgroupV2))
	if err != nil {
		t.Fatal(err)
	}
	if !cg.IsV2() {
		t.Fatal("a root with cgroup.controllers is unified mode")
	}
	msg, err := cg.Stats()
	if err != nil {
		t.Fatal(err)
	}
	m, ok := msg.(*v2.Metrics)
	if !ok {
		t.Fatalf("Stats returned %T, want *v2.Metrics", msg)
	}
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"pids.current", m.Pids.Current, 3},
		{"pids.max (max means no limit)", m.Pids.Limit, math.MaxUint64},
		{"cpu usage_usec", m.CPU.UsageUsec, 5000},
		{"cpu user_usec", m.CPU.UserUsec, 3000},
		{"cpu system_usec", m.CPU.SystemUsec, 2000},
		{"cpu nr_throttled", m.CPU.NrThrottled, 2},
		{"cpu throttled_usec", m.CPU.ThrottledUsec, 700},
		{"memory.current", m.Memory.Usage, 1048576},
		{"memory.max", m.Memory.UsageLimit, 20971520},
		{"memory.peak", m.Memory.MaxUsage, 2097152},
		{"memory.swap.max (max)", m.Memory.SwapLimit, math.MaxUint64},
		{"memory.stat anon", m.Memory.Anon, 4096},
		{"memory.stat file", m.Memory.File, 8192},
		{"memory.stat kernel_stack", m.Memory.KernelStack, 16384},
		{"memory.stat pgfault", m.Memory.Pgfault, 77},
		{"memory.events max", m.MemoryEvents.Max, 4},
		{"memory.events oom", m.MemoryEvents.Oom, 2},
		{"memory.events oom_kill", m.MemoryEvents.OomKill, 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if len(m.Io.Usage) != 1 || m.Io.Usage[0].Major != 8 || m.Io.Usage[0].Rbytes != 100 || m.Io.Usage[0].Wios != 4 {
		t.Errorf("io.stat = %v, want one entry 8:0 rbytes=100 wios=4", m.Io.Usage)
	}
}

func TestStatsV1(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"pids/default/ctr/pids.current":                  "2\n",
		"pids/default/ctr/pids.max":                      "100\n",
		"cpuacct/default/ctr/cpuacct.usage":              "9000\n",
		"cpuacct/default/ctr/cpuacct.usage_percpu":       "4000 5000 \n",
		"cpuacct/default/ctr/cpuacct.stat":               "user 3\nsystem 1\n",
		"cpu/default/ctr/cpu.stat":                       "nr_periods 5\nnr_throttled 1\nthrottled_time 42\n",
		"memory/default/ctr/memory.stat":                 "cache 10\nrss 20\npgfault 30\ntotal_pgmajfault 40\nhierarchical_memsw_limit 50\n",
		"memory/default/ctr/memory.usage_in_bytes":       "1000\n",
		"memory/default/ctr/memory.max_usage_in_bytes":   "2000\n",
		"memory/default/ctr/memory.limit_in_bytes":       "3000\n",
		"memory/default/ctr/memory.failcnt":              "4\n",
		"memory/default/ctr/memory.memsw.usage_in_bytes": "5000\n",
		"memory/default/ctr/memory.oom_control":          "oom_kill_disable 0\nunder_oom 0\noom_kill 6\n",
	})
	cg, err := parse(root, []byte(procCgroupV1))
	if err != nil {
		t.Fatal(err)
	}
	if cg.IsV2() {
		t.Fatal("no cgroup.controllers at the root: v1 (or hybrid) mode")
	}
	msg, err := cg.Stats()
	if err != nil {
		t.Fatal(err)
	}
	m, ok := msg.(*v1.Metrics)
	if !ok {
		t.Fatalf("Stats returned %T, want *v1.Metrics", msg)
	}
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"pids.current", m.Pids.Current, 2},
		{"pids.max", m.Pids.Limit, 100},
		{"cpuacct.usage", m.CPU.Usage.Total, 9000},
		{"cpuacct.stat user, in ns", m.CPU.Usage.User, 3 * nsPerTick},
		{"cpuacct.stat system, in ns", m.CPU.Usage.Kernel, 1 * nsPerTick},
		{"cpu.stat nr_throttled", m.CPU.Throttling.ThrottledPeriods, 1},
		{"cpu.stat throttled_time", m.CPU.Throttling.ThrottledTime, 42},
		{"memory.stat cache", m.Memory.Cache, 10},
		{"memory.stat rss", m.Memory.RSS, 20},
		{"memory.stat pgfault (renamed)", m.Memory.PgFault, 30},
		{"memory.stat total_pgmajfault (renamed)", m.Memory.TotalPgMajFault, 40},
		{"hierarchical_memsw_limit (renamed)", m.Memory.HierarchicalSwapLimit, 50},
		{"memory usage", m.Memory.Usage.Usage, 1000},
		{"memory max usage", m.Memory.Usage.Max, 2000},
		{"memory limit", m.Memory.Usage.Limit, 3000},
		{"memory failcnt", m.Memory.Usage.Failcnt, 4},
		{"memsw usage", m.Memory.Swap.Usage, 5000},
		{"oom_control oom_kill", m.MemoryOomControl.OomKill, 6},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if len(m.CPU.Usage.PerCPU) != 2 || m.CPU.Usage.PerCPU[1] != 5000 {
		t.Errorf("per-cpu usage = %v, want [4000 5000]", m.CPU.Usage.PerCPU)
	}
}

func TestParseRejects(t *testing.T) {
	root := t.TempDir()
	for _, in := range []string{"", "garbage", "4:memory:relative/path\n", "4:memory:/../../etc\n"} {
		if _, err := parse(root, []byte(in)); err == nil {
			t.Errorf("parse(%q) found a cgroup, want an error", in)
		}
	}
}

// TestWatchOOMV2 drives the inotify watch with a fixture memory.events:
// an increase of oom_kill is one OOM, other changes are not.
func TestWatchOOMV2(t *testing.T) {
	root := v2Fixture(t)
	cg, err := parse(root, []byte(procCgroupV2))
	if err != nil {
		t.Fatal(err)
	}
	ooms := make(chan struct{}, 10)
	stop, err := cg.WatchOOM(func() { ooms <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	events := filepath.Join(root, "kubepods/pod1/ctr/memory.events")
	write := func(s string) {
		if err := os.WriteFile(events, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("low 0\nhigh 1\nmax 4\noom 2\noom_kill 1\n") // no new kill
	select {
	case <-ooms:
		t.Fatal("an OOM was reported without a new oom_kill")
	case <-time.After(200 * time.Millisecond):
	}
	write("low 0\nhigh 1\nmax 5\noom 3\noom_kill 2\n")
	select {
	case <-ooms:
	case <-time.After(5 * time.Second):
		t.Fatal("no OOM reported after oom_kill went from 1 to 2")
	}
	stop()
	stop() // idempotent
}

func TestAddProcessRejectsPathTricks(t *testing.T) {
	for _, p := range []string{"relative", "/a/../../b"} {
		if err := AddProcess(t.TempDir(), p, os.Getpid()); err == nil {
			t.Errorf("AddProcess(%q) = nil, want an error", p)
		}
	}
}

func TestAddProcessV2(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{"cgroup.controllers": "cpu memory"})
	if err := AddProcess(root, "/shims/keel", 4242); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(root, "shims/keel/cgroup.procs"))
	if err != nil || string(got) != "4242" {
		t.Fatalf("cgroup.procs = %q, %v; want 4242", got, err)
	}
}

// TestReadFileBeyondBuffer: a file longer than the buffer it is read into
// (a v1 memory.stat, blkio files of a host with many disks) comes whole.
func TestReadFileBeyondBuffer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	for _, size := range []int{0, 1, 63, 64, 65, 5000} {
		want := strings.Repeat("x", size)
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		var buf [64]byte
		got, err := readFile(path, buf[:])
		if err != nil || string(got) != want {
			t.Errorf("%d bytes: read %d bytes, %v", size, len(got), err)
		}
	}
}
