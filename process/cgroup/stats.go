//go:build linux

package cgroup

import (
	"os"
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
	return m, nil
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
		CPU:          &v2.CPUStat{},
		MemoryEvents: &v2.MemoryEvents{},
	}
	_ = setFields(m.CPU, c.file("", "cpu.stat"), nil)
	mem := &v2.MemoryStat{
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
	m.Io = &v2.IOStat{Usage: readIOStat(c.file("", "io.stat"))}
	return m, nil
}

// readList reads a file of space-separated numbers.
func readList(path string) []uint64 {
	data, err := os.ReadFile(path)
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
	data, err := os.ReadFile(path)
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
