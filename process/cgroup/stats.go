//go:build linux

package cgroup

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Stats returns the cgroup's metrics: *v1.Metrics or *v2.Metrics, the
// messages containerd decodes for `ctr task metrics` and the CRI.
func (c *Cgroup) Stats() (proto.Message, error) {
	if c.IsV2() {
		return c.statsV2()
	}
	return c.statsV1()
}

// setFields copies a flat keyed file into msg's uint64 fields of the same
// name: the kernel's keys and the stats messages' field names agree, but
// for the renames in alias.
func setFields(msg proto.Message, path string, alias map[string]string) error {
	m := msg.ProtoReflect()
	fields := m.Descriptor().Fields()
	return readKeyed(path, func(key string, value uint64) {
		if a, ok := alias[key]; ok {
			key = a
		}
		if fd := fields.ByName(protoreflect.Name(key)); fd != nil && fd.Kind() == protoreflect.Uint64Kind && !fd.IsList() {
			m.Set(fd, protoreflect.ValueOfUint64(value))
		}
	})
}

// v1MemoryAlias maps cgroup v1 memory.stat keys to MemoryStat field names.
var v1MemoryAlias = func() map[string]string {
	a := map[string]string{}
	for k, v := range map[string]string{
		"pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out",
		"pgfault": "pg_fault", "pgmajfault": "pg_maj_fault",
	} {
		a[k], a["total_"+k] = v, "total_"+v
	}
	a["hierarchical_memsw_limit"] = "hierarchical_swap_limit"
	return a
}()

func (c *Cgroup) statsV1() (*v1.Metrics, error) {
	m := &v1.Metrics{}
	if _, ok := c.v1["pids"]; ok {
		m.Pids = &v1.PidsStat{
			Current: optUint(c.file("pids", "pids.current")),
			Limit:   optUint(c.file("pids", "pids.max")),
		}
	}
	if _, ok := c.v1["cpuacct"]; ok {
		usage := &v1.CPUUsage{
			Total:  optUint(c.file("cpuacct", "cpuacct.usage")),
			PerCPU: readList(c.file("cpuacct", "cpuacct.usage_percpu")),
		}
		// cpuacct.stat is in USER_HZ ticks; containerd reports ns.
		_ = readKeyed(c.file("cpuacct", "cpuacct.stat"), func(k string, v uint64) {
			switch k {
			case "user":
				usage.User = v * nsPerTick
			case "system":
				usage.Kernel = v * nsPerTick
			}
		})
		m.CPU = &v1.CPUStat{Usage: usage, Throttling: &v1.Throttle{}}
		if _, ok := c.v1["cpu"]; ok {
			_ = readKeyed(c.file("cpu", "cpu.stat"), func(k string, v uint64) {
				switch k {
				case "nr_periods":
					m.CPU.Throttling.Periods = v
				case "nr_throttled":
					m.CPU.Throttling.ThrottledPeriods = v
				case "throttled_time":
					m.CPU.Throttling.ThrottledTime = v
				}
			})
		}
	}
	if _, ok := c.v1["memory"]; ok {
		mem := &v1.MemoryStat{
			Usage:     c.memoryEntryV1(""),
			Swap:      c.memoryEntryV1("memsw."),
			Kernel:    c.memoryEntryV1("kmem."),
			KernelTCP: c.memoryEntryV1("kmem.tcp."),
		}
		if err := setFields(mem, c.file("memory", "memory.stat"), v1MemoryAlias); err != nil {
			return nil, err
		}
		m.Memory = mem
		oom := &v1.MemoryOomControl{}
		_ = setFields(oom, c.file("memory", "memory.oom_control"), nil)
		m.MemoryOomControl = oom
	}
	if _, ok := c.v1["blkio"]; ok {
		m.Blkio = c.blkioV1()
	}
	if dir, ok := c.v1["hugetlb"]; ok {
		for _, size := range hugePageSizes(dir, "usage_in_bytes") {
			f := func(name string) uint64 { return optUint(filepath.Join(dir, "hugetlb."+size+"."+name)) }
			m.Hugetlb = append(m.Hugetlb, &v1.HugetlbStat{
				Pagesize: size,
				Usage:    f("usage_in_bytes"),
				Max:      f("max_usage_in_bytes"),
				Failcnt:  f("failcnt"),
			})
		}
	}
	return m, nil
}

// blkioV1 reads the v1 blkio counters into cgroups/v3's fields. As
// cgroups/v3 does, it takes the I/O scheduler's recursive files when they
// have entries (CFQ's before Linux 5.0; BFQ's, blkio.bfq.*, since) and
// otherwise the throttle layer's, which count every bio whatever the
// scheduler: a kernel may have CFQ or BFQ files that stay empty because the
// container's disks use another scheduler.
func (c *Cgroup) blkioV1() *v1.BlkIOStat {
	s := &v1.BlkIOStat{}
	sched := []struct {
		name string
		dst  *[]*v1.BlkIOEntry
	}{
		{"io_service_bytes_recursive", &s.IoServiceBytesRecursive},
		{"io_serviced_recursive", &s.IoServicedRecursive},
		{"io_queued_recursive", &s.IoQueuedRecursive},
		{"io_service_time_recursive", &s.IoServiceTimeRecursive},
		{"io_wait_time_recursive", &s.IoWaitTimeRecursive},
		{"io_merged_recursive", &s.IoMergedRecursive},
		{"time_recursive", &s.IoTimeRecursive},
		{"sectors_recursive", &s.SectorsRecursive},
	}
	for _, prefix := range []string{"blkio.", "blkio.bfq."} {
		n := 0
		for _, f := range sched {
			*f.dst, _ = readBlkio(c.file("blkio", prefix+f.name))
			n += len(*f.dst)
		}
		if n > 0 {
			return s
		}
	}
	// The throttle files: the _recursive ones (which include child
	// cgroups, as the fields' names say) where the kernel has them.
	throttle := func(name string) []*v1.BlkIOEntry {
		e, err := readBlkio(c.file("blkio", "blkio.throttle."+name+"_recursive"))
		if err != nil {
			e, _ = readBlkio(c.file("blkio", "blkio.throttle."+name))
		}
		return e
	}
	s.IoServiceBytesRecursive = throttle("io_service_bytes")
	s.IoServicedRecursive = throttle("io_serviced")
	return s
}

// readBlkio parses a v1 blkio stat file: "MAJ:MIN Op value" lines, or
// "MAJ:MIN value" for the counters without an operation (sectors, time),
// and a closing "Total value" line, which is skipped.
func readBlkio(path string) ([]*v1.BlkIOEntry, error) {
	var buf [1024]byte
	data, err := readFile(path, buf[:])
	if err != nil {
		return nil, err
	}
	var out []*v1.BlkIOEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		maj, min, ok := strings.Cut(f[0], ":")
		if !ok {
			continue // "Total N"
		}
		e := &v1.BlkIOEntry{}
		if len(f) == 3 {
			e.Op = f[1]
		}
		var errs [3]error
		e.Major, errs[0] = strconv.ParseUint(maj, 10, 64)
		e.Minor, errs[1] = strconv.ParseUint(min, 10, 64)
		e.Value, errs[2] = strconv.ParseUint(f[len(f)-1], 10, 64)
		if errs[0] == nil && errs[1] == nil && errs[2] == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// hugePageSizes lists the page sizes dir has hugetlb files for, from the
// names hugetlb.<size>.<suffix>. The kernel names sizes "2MB", "1GB",
// "64KB", the Pagesize strings cgroups/v3 reports; the v2 reservation
// files (hugetlb.<size>.rsvd.*) are not sizes.
func hugePageSizes(dir, suffix string) []string {
	entries, _ := os.ReadDir(dir)
	var sizes []string
	for _, e := range entries {
		size, ok := strings.CutPrefix(e.Name(), "hugetlb.")
		if !ok {
			continue
		}
		if size, ok = strings.CutSuffix(size, "."+suffix); ok && !strings.Contains(size, ".") {
			sizes = append(sizes, size)
		}
	}
	return sizes
}

func (c *Cgroup) memoryEntryV1(prefix string) *v1.MemoryEntry {
	f := func(name string) uint64 { return optUint(c.file("memory", "memory."+prefix+name)) }
	return &v1.MemoryEntry{
		Usage: f("usage_in_bytes"), Max: f("max_usage_in_bytes"),
		Limit: f("limit_in_bytes"), Failcnt: f("failcnt"),
	}
}

// nsPerTick converts USER_HZ ticks (100 per second on Linux) to ns.
const nsPerTick = 1e9 / 100

func (c *Cgroup) statsV2() (*v2.Metrics, error) {
	m := &v2.Metrics{
		Pids: &v2.PidsStat{
			Current: optUint(c.file("", "pids.current")),
			Limit:   optUint(c.file("", "pids.max")),
		},
		CPU:          &v2.CPUStat{PSI: readPSI(c.file("", "cpu.pressure"))},
		MemoryEvents: &v2.MemoryEvents{},
	}
	_ = setFields(m.CPU, c.file("", "cpu.stat"), nil)
	mem := &v2.MemoryStat{
		PSI:          readPSI(c.file("", "memory.pressure")),
		Usage:        optUint(c.file("", "memory.current")),
		UsageLimit:   optUint(c.file("", "memory.max")),
		MaxUsage:     optUint(c.file("", "memory.peak")),
		SwapUsage:    optUint(c.file("", "memory.swap.current")),
		SwapLimit:    optUint(c.file("", "memory.swap.max")),
		SwapMaxUsage: optUint(c.file("", "memory.swap.peak")),
	}
	if err := setFields(mem, c.file("", "memory.stat"), nil); err != nil {
		return nil, err
	}
	m.Memory = mem
	_ = setFields(m.MemoryEvents, c.file("", "memory.events"), nil)
	m.Io = &v2.IOStat{
		Usage: readIOStat(c.file("", "io.stat")),
		PSI:   readPSI(c.file("", "io.pressure")),
	}
	// Only the page sizes the hugetlb controller gives this cgroup files
	// for: none when the controller is not enabled for it.
	for _, size := range hugePageSizes(c.unified, "max") {
		f := func(name string) string { return c.file("", "hugetlb."+size+"."+name) }
		h := &v2.HugeTlbStat{Pagesize: size, Current: optUint(f("current")), Max: optUint(f("max"))}
		_ = readKeyed(f("events"), func(k string, v uint64) {
			if k == "max" { // allocations refused by the limit
				h.Failcnt = v
			}
		})
		m.Hugetlb = append(m.Hugetlb, h)
	}
	return m, nil
}

// readPSI parses a v2 pressure file (cpu, memory or io.pressure):
// "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" and a "full ..." line.
// It is nil when the kernel has no PSI (no file), when PSI is off for the
// cgroup (cgroup.pressure 0: reads fail with EOPNOTSUPP) and when the file
// does not parse, rather than zero pressure that was never measured.
func readPSI(path string) *v2.PSIStats {
	var buf [256]byte
	data, err := readFile(path, buf[:])
	if err != nil {
		return nil
	}
	psi := &v2.PSIStats{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		d := &v2.PSIData{}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "avg10":
				d.Avg10, err = strconv.ParseFloat(v, 64)
			case "avg60":
				d.Avg60, err = strconv.ParseFloat(v, 64)
			case "avg300":
				d.Avg300, err = strconv.ParseFloat(v, 64)
			case "total":
				d.Total, err = strconv.ParseUint(v, 10, 64)
			}
			if err != nil {
				return nil
			}
		}
		switch f[0] {
		case "some":
			psi.Some = d
		case "full":
			psi.Full = d
		}
	}
	if psi.Some == nil && psi.Full == nil {
		return nil
	}
	return psi
}

// readList reads a file of space-separated numbers.
func readList(path string) []uint64 {
	var buf [256]byte
	data, err := readFile(path, buf[:])
	if err != nil {
		return nil
	}
	var out []uint64
	for _, f := range strings.Fields(string(data)) {
		if v, err := strconv.ParseUint(f, 10, 64); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// readIOStat parses v2 io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...".
func readIOStat(path string) []*v2.IOEntry {
	var buf [1024]byte
	data, err := readFile(path, buf[:])
	if err != nil {
		return nil
	}
	var out []*v2.IOEntry
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		maj, min, ok := strings.Cut(fields[0], ":")
		if !ok {
			continue
		}
		e := &v2.IOEntry{}
		e.Major, _ = strconv.ParseUint(maj, 10, 64)
		e.Minor, _ = strconv.ParseUint(min, 10, 64)
		for _, kv := range fields[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseUint(v, 10, 64)
			switch k {
			case "rbytes":
				e.Rbytes = n
			case "wbytes":
				e.Wbytes = n
			case "rios":
				e.Rios = n
			case "wios":
				e.Wios = n
			}
		}
		out = append(out, e)
	}
	return out
}
