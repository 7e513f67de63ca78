//go:build linux

package cgroup

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
)

// statsV2Of reads the stats of the v2 fixture after writing files into
// the container's cgroup ("" content removes a file).
func statsV2Of(t *testing.T, files map[string]string) *v2.Metrics {
	t.Helper()
	root := v2Fixture(t)
	dir := filepath.Join(root, "kubepods/pod1/ctr")
	for name, content := range files {
		if content == "" {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			delete(files, name)
		}
	}
	writeFiles(t, dir, files)
	cg, err := parse(root, []byte(procCgroupV2))
	if err != nil {
		t.Fatal(err)
	}
	m, err := cg.statsV2()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

const procCgroupV1More = `7:blkio:/default/ctr
6:hugetlb:/default/ctr
8:pids:/default/ctr
`

// statsV1Of reads the stats of a v1 tree of blkio, hugetlb and pids files.
func statsV1Of(t *testing.T, files map[string]string) *v1.Metrics {
	t.Helper()
	root := t.TempDir()
	for _, c := range []string{"blkio", "hugetlb", "pids"} {
		if err := os.MkdirAll(filepath.Join(root, c, "default/ctr"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFiles(t, root, files)
	cg, err := parse(root, []byte(procCgroupV1More))
	if err != nil {
		t.Fatal(err)
	}
	m, err := cg.statsV1()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// "max" is no limit; cgroups/v3's cgroup2 reports it as MaxUint64, and the
// CRI subtracts usage from it: as 0 the container had no memory left.
func TestMaxIsMaxUint64(t *testing.T) {
	m := statsV2Of(t, map[string]string{
		"memory.max":      "max\n",
		"memory.swap.max": "max\n",
		"pids.max":        "max\n",
	})
	for _, c := range []struct {
		name string
		got  uint64
	}{
		{"v2 memory.max", m.Memory.UsageLimit},
		{"v2 memory.swap.max", m.Memory.SwapLimit},
		{"v2 pids.max", m.Pids.Limit},
	} {
		if c.got != math.MaxUint64 {
			t.Errorf("%s = max reads as %d, want MaxUint64", c.name, c.got)
		}
	}
	m1 := statsV1Of(t, map[string]string{
		"pids/default/ctr/pids.current": "1\n",
		"pids/default/ctr/pids.max":     "max\n",
	})
	if m1.Pids.Limit != math.MaxUint64 {
		t.Errorf("v1 pids.max = max reads as %d, want MaxUint64", m1.Pids.Limit)
	}
	// A real limit of 0 stays 0.
	if m := statsV2Of(t, map[string]string{"pids.max": "0\n"}); m.Pids.Limit != 0 {
		t.Errorf("pids.max = 0 reads as %d", m.Pids.Limit)
	}
}

func TestPSIV2(t *testing.T) {
	m := statsV2Of(t, map[string]string{
		"cpu.pressure":    "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
		"memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=3\n",
		"io.pressure":     "some avg10=98.12 avg60=70.13 avg300=23.30 total=80296446\nfull avg10=10.00 avg60=0.00 avg300=0.00 total=99\n",
	})
	if m.CPU.PSI == nil || m.Memory.PSI == nil || m.Io.PSI == nil {
		t.Fatalf("PSI cpu %v, memory %v, io %v: want all three", m.CPU.PSI, m.Memory.PSI, m.Io.PSI)
	}
	if s := m.CPU.PSI.Some; s == nil || s.Avg10 != 1.5 || s.Avg60 != 0.25 || s.Total != 12345 {
		t.Errorf("cpu some = %v", s)
	}
	if f := m.CPU.PSI.Full; f == nil || f.Total != 0 {
		t.Errorf("cpu full = %v, want present and zero", f)
	}
	if m.Memory.PSI.Some.GetTotal() != 7 || m.Memory.PSI.Full.GetTotal() != 3 {
		t.Errorf("memory PSI = %v", m.Memory.PSI)
	}
	if s := m.Io.PSI.Some; s.GetAvg300() != 23.30 || s.GetTotal() != 80296446 || m.Io.PSI.Full.GetAvg10() != 10 {
		t.Errorf("io PSI = %v", m.Io.PSI)
	}
}

// A kernel without PSI has no pressure files: the stats are nil, no error.
func TestPSIAbsentV2(t *testing.T) {
	m := statsV2Of(t, map[string]string{"cpu.pressure": "", "memory.pressure": "", "io.pressure": ""})
	if m.CPU.PSI != nil || m.Memory.PSI != nil || m.Io.PSI != nil {
		t.Errorf("PSI cpu %v, memory %v, io %v: want nil without pressure files", m.CPU.PSI, m.Memory.PSI, m.Io.PSI)
	}
	// An unparsable file is not reported as zero pressure either.
	m = statsV2Of(t, map[string]string{"cpu.pressure": "some avg10=x total=1\n"})
	if m.CPU.PSI != nil {
		t.Errorf("garbled cpu.pressure read as %v", m.CPU.PSI)
	}
}

func TestHugetlbV2(t *testing.T) {
	m := statsV2Of(t, map[string]string{
		"hugetlb.2MB.current":      "4194304\n",
		"hugetlb.2MB.max":          "max\n",
		"hugetlb.2MB.events":       "max 2\n",
		"hugetlb.2MB.rsvd.current": "0\n", // reservations: not a page size
		"hugetlb.2MB.rsvd.max":     "max\n",
		"hugetlb.1GB.current":      "0\n",
		"hugetlb.1GB.max":          "1073741824\n",
	})
	want := map[string]*v2.HugeTlbStat{
		"2MB": {Pagesize: "2MB", Current: 4194304, Max: math.MaxUint64, Failcnt: 2},
		"1GB": {Pagesize: "1GB", Current: 0, Max: 1073741824},
	}
	if len(m.Hugetlb) != len(want) {
		t.Fatalf("hugetlb = %v, want 2MB and 1GB", m.Hugetlb)
	}
	for _, h := range m.Hugetlb {
		w := want[h.Pagesize]
		if w == nil || h.Current != w.Current || h.Max != w.Max || h.Failcnt != w.Failcnt {
			t.Errorf("hugetlb %s = %v, want %v", h.Pagesize, h, w)
		}
	}
	if m := statsV2Of(t, nil); m.Hugetlb != nil {
		t.Errorf("no hugetlb files read as %v", m.Hugetlb)
	}
}

func TestHugetlbV1(t *testing.T) {
	m := statsV1Of(t, map[string]string{
		"hugetlb/default/ctr/hugetlb.2MB.usage_in_bytes":      "2097152\n",
		"hugetlb/default/ctr/hugetlb.2MB.max_usage_in_bytes":  "4194304\n",
		"hugetlb/default/ctr/hugetlb.2MB.failcnt":             "1\n",
		"hugetlb/default/ctr/hugetlb.2MB.limit_in_bytes":      "9223372036854771712\n",
		"hugetlb/default/ctr/hugetlb.2MB.rsvd.usage_in_bytes": "0\n",
	})
	if len(m.Hugetlb) != 1 {
		t.Fatalf("hugetlb = %v, want 2MB only", m.Hugetlb)
	}
	if h := m.Hugetlb[0]; h.Pagesize != "2MB" || h.Usage != 2097152 || h.Max != 4194304 || h.Failcnt != 1 {
		t.Errorf("hugetlb = %v", h)
	}
}

// blkio lines are "MAJ:MIN Op value", or "MAJ:MIN value" for the counters
// without an operation, and end with a "Total" line.
const (
	blkBytes    = "8:0 Read 1000\n8:0 Write 2000\n8:0 Sync 2500\n8:0 Async 500\n8:0 Discard 0\n8:0 Total 3000\n8:16 Read 7\n8:16 Write 0\n8:16 Sync 7\n8:16 Async 0\n8:16 Discard 0\n8:16 Total 7\nTotal 3007\n"
	blkServiced = "8:0 Read 10\n8:0 Write 20\n8:0 Total 30\nTotal 30\n"
)

func TestBlkioV1(t *testing.T) {
	const d = "blkio/default/ctr/"
	entry := func(es []*v1.BlkIOEntry, major, minor uint64, op string) *v1.BlkIOEntry {
		for _, e := range es {
			if e.Major == major && e.Minor == minor && e.Op == op {
				return e
			}
		}
		return nil
	}
	t.Run("throttle only", func(t *testing.T) {
		m := statsV1Of(t, map[string]string{
			d + "blkio.throttle.io_service_bytes": blkBytes,
			d + "blkio.throttle.io_serviced":      blkServiced,
		})
		b := m.Blkio
		if len(b.GetIoServiceBytesRecursive()) != 12 || len(b.GetIoServicedRecursive()) != 3 {
			t.Fatalf("blkio = %v, want 12 byte and 3 serviced entries (Total line skipped)", b)
		}
		if e := entry(b.GetIoServiceBytesRecursive(), 8, 16, "Read"); e == nil || e.Value != 7 {
			t.Errorf("8:16 Read = %v, want 7", e)
		}
		if e := entry(b.GetIoServicedRecursive(), 8, 0, "Write"); e == nil || e.Value != 20 {
			t.Errorf("8:0 Write ios = %v, want 20", e)
		}
	})
	t.Run("throttle recursive preferred", func(t *testing.T) {
		m := statsV1Of(t, map[string]string{
			d + "blkio.throttle.io_service_bytes":           "8:0 Read 1\nTotal 1\n",
			d + "blkio.throttle.io_service_bytes_recursive": "8:0 Read 5\nTotal 5\n",
		})
		if e := entry(m.Blkio.GetIoServiceBytesRecursive(), 8, 0, "Read"); e == nil || e.Value != 5 {
			t.Errorf("8:0 Read = %v, want 5 from the _recursive file", e)
		}
	})
	t.Run("CFQ", func(t *testing.T) {
		m := statsV1Of(t, map[string]string{
			d + "blkio.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 0\nTotal 4096\n",
			d + "blkio.io_serviced_recursive":      "8:0 Read 1\n8:0 Write 0\nTotal 1\n",
			d + "blkio.sectors_recursive":          "8:0 8\n",
			d + "blkio.time_recursive":             "8:0 15\n",
			d + "blkio.io_queued_recursive":        "Total 0\n",
			d + "blkio.throttle.io_service_bytes":  blkBytes, // ignored: the scheduler has counts
		})
		b := m.Blkio
		if e := entry(b.GetIoServiceBytesRecursive(), 8, 0, "Read"); len(b.GetIoServiceBytesRecursive()) != 2 || e == nil || e.Value != 4096 {
			t.Errorf("io_service_bytes_recursive = %v, want CFQ's 8:0 Read 4096", b.GetIoServiceBytesRecursive())
		}
		if e := entry(b.GetSectorsRecursive(), 8, 0, ""); e == nil || e.Value != 8 {
			t.Errorf("sectors_recursive = %v, want 8:0 8", b.GetSectorsRecursive())
		}
		if e := entry(b.GetIoTimeRecursive(), 8, 0, ""); e == nil || e.Value != 15 {
			t.Errorf("time_recursive = %v, want 8:0 15", b.GetIoTimeRecursive())
		}
		if len(b.GetIoServicedRecursive()) != 2 || len(b.GetIoQueuedRecursive()) != 0 {
			t.Errorf("serviced %v, queued %v", b.GetIoServicedRecursive(), b.GetIoQueuedRecursive())
		}
	})
	t.Run("empty CFQ falls back to throttle", func(t *testing.T) {
		m := statsV1Of(t, map[string]string{
			d + "blkio.io_service_bytes_recursive": "Total 0\n",
			d + "blkio.io_serviced_recursive":      "Total 0\n",
			d + "blkio.throttle.io_service_bytes":  blkBytes,
			d + "blkio.throttle.io_serviced":       blkServiced,
		})
		if len(m.Blkio.GetIoServiceBytesRecursive()) != 12 || len(m.Blkio.GetIoServicedRecursive()) != 3 {
			t.Errorf("blkio = %v, want the throttle files' entries", m.Blkio)
		}
	})
	t.Run("BFQ", func(t *testing.T) {
		m := statsV1Of(t, map[string]string{
			d + "blkio.bfq.io_service_bytes_recursive": "8:0 Read 8192\nTotal 8192\n",
			d + "blkio.bfq.io_serviced_recursive":      "8:0 Read 2\nTotal 2\n",
			d + "blkio.throttle.io_service_bytes":      blkBytes,
		})
		if e := entry(m.Blkio.GetIoServiceBytesRecursive(), 8, 0, "Read"); len(m.Blkio.GetIoServiceBytesRecursive()) != 1 || e == nil || e.Value != 8192 {
			t.Errorf("io_service_bytes_recursive = %v, want BFQ's 8:0 Read 8192", m.Blkio.GetIoServiceBytesRecursive())
		}
	})
}

// BenchmarkStatsOwnCgroup reads the metrics of the benchmark's own cgroup
// on the real cgroupfs, whose files all claim a size of 4096: allocs/op and
// B/op are the garbage each Stats call (the CRI's, every few seconds per
// container) leaves in the shim until its next collection.
func BenchmarkStatsOwnCgroup(b *testing.B) {
	cg, err := ForPid(DefaultRoot, os.Getpid())
	if err != nil {
		b.Skip(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cg.Stats(); err != nil {
			b.Fatal(err)
		}
	}
}
