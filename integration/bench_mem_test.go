//go:build linux

package integration

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// memBreakdown is where one idle shim's memory goes, from the kernel's side
// (smaps), so that it can be had for any Go shim, the reference included:
//
//   - Rss, Pss, PssAnon, PssFile: smaps_rollup. A shim's anonymous pages are
//     its own (it is exec'd, nothing is shared after a fork), so PssAnon is
//     what every more container costs beyond the binary's shared pages.
//   - Heap: anonymous pages in the Go heap arenas: live and
//     free-but-unreturned heap and every goroutine's stack, which Go
//     allocates from the heap, threads' g0 stacks included. Go reserves
//     arenas 64 MiB at a time, 64 MiB-aligned, at a (since Go 1.26,
//     randomized) hint address, and maps in the part it uses: a run of
//     adjacent anonymous mappings that starts on a 64 MiB boundary and
//     spans a multiple of 64 MiB is taken for arenas.
//   - Data: anonymous pages of the executable's own image: written .data
//     and .noptrdata pages (copy on write) and .bss/.noptrbss.
//   - Other: every other anonymous page: the runtime's off-heap metadata
//     (span and page-allocator structures, GC bitmaps, per-P caches,
//     persistentalloc chunks, signal stacks).
//   - THP: anonymous pages in transparent huge pages, all counted above.
type memBreakdown struct {
	Rss, Pss, PssAnon, PssFile float64
	Heap, Data, Other, THP     float64
}

func readMemBreakdown(pid int, binary string) (memBreakdown, error) {
	var m memBreakdown
	roll, err := procKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Rss", "Pss", "Pss_Anon", "Pss_File", "AnonHugePages")
	if err != nil {
		return m, err
	}
	m.Rss, m.Pss, m.PssAnon, m.PssFile, m.THP = roll["Rss"], roll["Pss"], roll["Pss_Anon"], roll["Pss_File"], roll["AnonHugePages"]

	lo, hi, err := elfDataRange(binary)
	if err != nil {
		return m, err
	}
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return m, err
	}
	defer f.Close()
	type mapping struct {
		start, end uint64
		path       string
		anonKB     float64
	}
	var maps []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			a, b, _ := strings.Cut(fields[0], "-")
			var mp mapping
			mp.start, _ = strconv.ParseUint(a, 16, 64)
			mp.end, _ = strconv.ParseUint(b, 16, 64)
			if len(fields) >= 6 {
				mp.path = strings.Join(fields[5:], " ")
			}
			maps = append(maps, mp)
			continue
		}
		if len(fields) >= 2 && fields[0] == "Anonymous:" && len(maps) > 0 {
			maps[len(maps)-1].anonKB, _ = strconv.ParseFloat(fields[1], 64)
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	const arena = 64 << 20
	for i := 0; i < len(maps); {
		// A run of adjacent anonymous mappings.
		j := i + 1
		if maps[i].path == "" {
			for j < len(maps) && maps[j].path == "" && maps[j].start == maps[j-1].end {
				j++
			}
		}
		run := maps[i:j]
		isArena := run[0].path == "" && run[0].start%arena == 0 && (run[len(run)-1].end-run[0].start)%arena == 0
		for _, mp := range run {
			switch {
			case isArena:
				m.Heap += mp.anonKB
			case (exe != "" && mp.path == exe) || (mp.path == "" && mp.start < hi && mp.end > lo):
				m.Data += mp.anonKB
			default:
				m.Other += mp.anonKB
			}
		}
		i = j
	}
	return m, nil
}

// elfDataRange is the address range of an executable's writable data
// (.data, .noptrdata, .bss, .noptrbss): the PT_LOAD segments with PF_W,
// memory size included (bss is past the file's part).
func elfDataRange(path string) (lo, hi uint64, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	lo = ^uint64(0)
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_W != 0 {
			lo = min(lo, p.Vaddr)
			hi = max(hi, p.Vaddr+p.Memsz)
		}
	}
	if hi == 0 {
		return 0, 0, fmt.Errorf("%s has no writable segment", path)
	}
	return lo, hi, nil
}

// goView is the Go runtime's own view of one shim, asked for with SIGUSR1.
// Keel logs its goroutine count and heap statistics (after a GC that
// returns free memory to the kernel, so it is read after the smaps); the
// reference's shim library logs a goroutine dump, whose goroutines are
// counted. Heap figures are Keel's only (zero for the reference).
type goView struct {
	Goroutines                      float64
	HeapAllocKB, HeapSysKB, StackKB float64
}

var (
	keelGoLine  = regexp.MustCompile(`msg=goroutines .*?count=(\d+) heap_alloc=(\d+) heap_sys=(\d+) stacks_sys=(\d+)`)
	refDumpRE   = regexp.MustCompile(`=== BEGIN goroutine stack dump ===.*`)
	goroutineRE = regexp.MustCompile(`goroutine \d+ \[`)
)

func (d *Daemon) goViewOf(b testing.TB, rt benchRuntime, pid int) goView {
	b.Helper()
	var re *regexp.Regexp
	if rt.Name == "keel" {
		re = keelGoLine
	} else {
		re = refDumpRE
	}
	before := len(re.FindAllString(d.log(b), -1))
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		all := re.FindAllStringSubmatch(d.log(b), -1)
		if len(all) <= before {
			continue
		}
		last := all[len(all)-1]
		if rt.Name != "keel" {
			return goView{Goroutines: float64(len(goroutineRE.FindAllString(last[0], -1)))}
		}
		n := make([]float64, 4)
		for i := range n {
			n[i], _ = strconv.ParseFloat(last[i+1], 64)
		}
		return goView{Goroutines: n[0], HeapAllocKB: n[1] / 1024, HeapSysKB: n[2] / 1024, StackKB: n[3] / 1024}
	}
	b.Logf("%s shim %d logged nothing after SIGUSR1", rt.Name, pid)
	return goView{}
}
