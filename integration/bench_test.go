//go:build linux

package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// Run with `make bench` (see bench_util_test.go for the knobs), or e.g.
//
//	KEEL_BENCH_ROUNDS=3 go test -run '^$' -bench Footprint -benchtime 1x ./integration/
//
// Every benchmark has sub-benchmarks VERSION/keel and VERSION/runc run
// against one containerd; ns/op is harness time and means little, the
// reported metrics are what to compare.

// footprintContainers is how many idle containers (one shim each) a
// footprint measurement starts.
const footprintContainers = 5

// footprintSettle lets the shims finish starting (goroutines parking, a
// first GC) before they are measured idle.
const footprintSettle = 2 * time.Second

// BenchmarkFootprint measures idle shims: 5 detached `sleep 3600`
// containers per runtime, then per shim its memory (smaps_rollup, and where
// the anonymous part goes: see memBreakdown) and Threads (status); then,
// asked with SIGUSR1 (after the smaps are read: Keel frees memory first),
// the Go runtime's view: goroutines, and Keel's heap and stack figures. The
// medians are reported, with the shim binary's size.
//
// Pss charges each shared page to the processes sharing it in equal parts:
// the 5 shims run the same binary, so its text and read-only data are split
// 5 ways and Pss is well below Rss. Pss is the better measure of what one
// more container costs (Pss_Anon most of all: the binary's pages are shared
// by every pod of the node); Rss is what one shim alone would cost. Keel and
// runc shims never run at the same time here, so neither shares pages with
// the other.
func BenchmarkFootprint(b *testing.B) {
	forEachBenchVersion(b, func(b *testing.B, d *Daemon, rts []benchRuntime) {
		alternate(b, rts, func(b *testing.B, rt benchRuntime) {
			size, load, err := binarySizes(rt.Binary)
			if err != nil {
				b.Fatal(err)
			}
			var mems []memBreakdown
			var threads []float64
			var gos []goView
			for b.Loop() {
				ids := make([]string, footprintContainers)
				shims := make([]int, footprintContainers)
				for i := range ids {
					ids[i] = d.NewID("idle-" + rt.Name)
					if out, err := d.ctrQuiet(2*time.Minute, "run", "-d", "--runtime", rt.Runtime, imageRef, ids[i], "sleep", "3600"); err != nil {
						b.Fatalf("%v\n%s", err, out)
					}
					task := d.WaitStatus(b, ids[i], "RUNNING")
					shims[i] = d.benchShimOf(b, rt, ids[i], task.Pid)
				}
				time.Sleep(footprintSettle)
				for _, pid := range shims {
					mem, err := readMemBreakdown(pid, rt.Binary)
					if err != nil {
						b.Fatal(err)
					}
					st, err := procKB(fmt.Sprintf("/proc/%d/status", pid), "Threads")
					if err != nil {
						b.Fatal(err)
					}
					mems, threads = append(mems, mem), append(threads, st["Threads"])
				}
				for _, pid := range shims {
					gos = append(gos, d.goViewOf(b, rt, pid))
				}
				for i, id := range ids {
					d.removeBenchTask(b, id, shims[i])
				}
			}
			pick := func(f func(m memBreakdown) float64) []float64 {
				var xs []float64
				for _, m := range mems {
					xs = append(xs, f(m))
				}
				return xs
			}
			pickGo := func(f func(g goView) float64) []float64 {
				var xs []float64
				for _, g := range gos {
					xs = append(xs, f(g))
				}
				return xs
			}
			b.Logf("%s shims: Rss kB %v, Pss_Anon kB %v, threads %v, goroutines %v", rt.Name,
				pick(func(m memBreakdown) float64 { return m.Rss }), pick(func(m memBreakdown) float64 { return m.PssAnon }),
				threads, pickGo(func(g goView) float64 { return g.Goroutines }))
			b.Logf("%s shim 0: %+v %+v", rt.Name, mems[0], gos[0])
			b.ReportMetric(median(pick(func(m memBreakdown) float64 { return m.Rss })), "rss-kB")
			b.ReportMetric(median(pick(func(m memBreakdown) float64 { return m.Pss })), "pss-kB")
			b.ReportMetric(median(pick(func(m memBreakdown) float64 { return m.PssAnon })), "pss-anon-kB")
			b.ReportMetric(median(pick(func(m memBreakdown) float64 { return m.PssFile })), "pss-file-kB")
			b.ReportMetric(median(pick(func(m memBreakdown) float64 { return m.Heap })), "anon-heap-kB")
			b.ReportMetric(median(pick(func(m memBreakdown) float64 { return m.Data })), "anon-data-kB")
			b.ReportMetric(median(pick(func(m memBreakdown) float64 { return m.Other })), "anon-other-kB")
			b.ReportMetric(median(pick(func(m memBreakdown) float64 { return m.THP })), "anon-thp-kB")
			b.ReportMetric(median(threads), "threads")
			b.ReportMetric(median(pickGo(func(g goView) float64 { return g.Goroutines })), "goroutines")
			if rt.Name == "keel" {
				b.ReportMetric(median(pickGo(func(g goView) float64 { return g.HeapAllocKB })), "keel-heap-alloc-kB")
				b.ReportMetric(median(pickGo(func(g goView) float64 { return g.HeapSysKB })), "keel-heap-sys-kB")
				b.ReportMetric(median(pickGo(func(g goView) float64 { return g.StackKB })), "keel-stacks-sys-kB")
			}
			b.ReportMetric(float64(size), "bin-bytes")
			b.ReportMetric(float64(load), "bin-load-bytes")
		})
	})
}

// BenchmarkStartExit times `ctr run --rm IMAGE ID true`, from ctr's start to
// its exit (create, start, exit, delete, and the shim's start-up and exit),
// and reports the median per run. -benchtime Nx sets the runs per round.
func BenchmarkStartExit(b *testing.B) {
	forEachBenchVersion(b, func(b *testing.B, d *Daemon, rts []benchRuntime) {
		alternate(b, rts, func(b *testing.B, rt benchRuntime) {
			var ms []float64
			for b.Loop() {
				id := d.NewID("lat-" + rt.Name)
				start := time.Now()
				out, err := d.ctrQuiet(time.Minute, "run", "--rm", "--runtime", rt.Runtime, imageRef, id, "true")
				el := time.Since(start)
				if err != nil {
					b.Fatalf("%v\n%s", err, out)
				}
				ms = append(ms, float64(el.Microseconds())/1000)
			}
			b.ReportMetric(median(ms), "median-ms")
		})
	})
}

// gib is what the stdout benchmarks write: exactly 1 GiB.
const gib = 1 << 30

// BenchmarkStdout has a container write 1 GiB to its stdout, which the
// shim copies
//
//   - file: to a file:// log URI (the file must end up exactly 1 GiB),
//   - fifo: into the FIFOs the benchmark reads itself through the containerd
//     Go client (it must read exactly 1 GiB).
//
// Three writers: busybox `head -c`, which writes 4 KiB at a time, as busy
// loggers do, and spends a core of its own doing so; `dd bs=64k` (the
// "-64k" runs), a pipe's default capacity at a time; and `dd bs=1M` (the
// "-1m" runs), which writes 1 MiB at a time at little cost, so that the
// shims' copying is what limits the rate.
//
// It reports MB/s (1e6 bytes/s, as Go's own MB/s) over the wall time from
// task start until the exit status and all the data have arrived, the shim's
// CPU time (utime+stime of the shim process over that interval, read before
// the task is deleted since the shim exits then), the shim's peak RSS, and
// the context switches of the shim and of the whole machine, in thousands.
func BenchmarkStdout(b *testing.B) {
	writers := []struct {
		suffix string
		args   []string
	}{
		{"", []string{"head", "-c", strconv.Itoa(gib), "/dev/zero"}},
		{"-64k", []string{"dd", "if=/dev/zero", "bs=65536", "count=" + strconv.Itoa(gib>>16), "status=none"}},
		{"-1m", []string{"dd", "if=/dev/zero", "bs=1048576", "count=" + strconv.Itoa(gib>>20), "status=none"}},
	}
	forEachBenchVersion(b, func(b *testing.B, d *Daemon, rts []benchRuntime) {
		c, ctx := d.Client(b)
		for _, w := range writers {
			for _, mode := range []string{"file", "fifo"} {
				b.Run(mode+w.suffix, func(b *testing.B) {
					alternate(b, rts, func(b *testing.B, rt benchRuntime) {
						var mbps, cpu, hwm, shimSw, allSw []float64
						for b.Loop() {
							r := d.stdoutGiB(ctx, b, c, rt, mode, w.args)
							mbps = append(mbps, gib/1e6/r.wall.Seconds())
							cpu = append(cpu, r.cpu)
							hwm = append(hwm, r.hwm)
							shimSw = append(shimSw, r.shimSwitches/1e3)
							allSw = append(allSw, r.allSwitches/1e3)
						}
						b.ReportMetric(median(mbps), "MB/s")
						b.ReportMetric(median(cpu), "shim-cpu-s/GiB")
						b.ReportMetric(median(hwm), "shim-maxrss-kB")
						b.ReportMetric(median(shimSw), "shim-kcsw/GiB")
						b.ReportMetric(median(allSw), "all-kcsw/GiB")
					})
				})
			}
		}
	})
}

type stdoutResult struct {
	wall time.Duration
	cpu  float64 // shim CPU seconds from task start to the end
	hwm  float64 // shim VmHWM, kB

	shimSwitches, allSwitches float64 // context switches: the shim's, the machine's
}

// countingWriter counts what it is given and closes full once it has had
// gib bytes.
type countingWriter struct {
	n    atomic.Int64
	full chan struct{}
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n := w.n.Add(int64(len(p)))
	if n >= gib && n-int64(len(p)) < gib {
		close(w.full)
	}
	return len(p), nil
}

func (d *Daemon) stdoutGiB(ctx context.Context, b *testing.B, c *containerd.Client, rt benchRuntime, mode string, args []string) stdoutResult {
	b.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	img, err := c.GetImage(ctx, imageRef)
	if err != nil {
		b.Fatal(err)
	}
	id := d.NewID("gib-" + rt.Name)
	cont, err := c.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithNewSnapshot(id, img),
		containerd.WithRuntime(rt.Runtime, nil),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs(args...)))
	if err != nil {
		b.Fatal(err)
	}
	defer cont.Delete(context.WithoutCancel(ctx), containerd.WithSnapshotCleanup)

	var creator cio.Creator
	var counter *countingWriter
	logPath := filepath.Join(d.Dir, id+".log")
	switch mode {
	case "file":
		creator = cio.LogFile(logPath)
		defer os.Remove(logPath)
	case "fifo":
		counter = &countingWriter{full: make(chan struct{})}
		// containerd-shim-runc-v2 refuses a task without a stderr FIFO
		// ("opening file \"\" failed"), so both shims get one; nothing is
		// written to it.
		creator = cio.NewCreator(cio.WithStreams(nil, counter, io.Discard), cio.WithFIFODir(filepath.Join(d.Dir, "fifo")))
	default:
		b.Fatalf("unknown mode %q", mode)
	}
	task, err := cont.NewTask(ctx, creator)
	if err != nil {
		b.Fatalf("%s: new task: %v", rt.Name, err)
	}
	deleted := false
	defer func() {
		if !deleted {
			task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
		}
	}()
	shim := d.benchShimOf(b, rt, id, int(task.Pid()))
	exitCh, err := task.Wait(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cpu0, err := cpuSeconds(shim)
	if err != nil {
		b.Fatal(err)
	}
	sw0, all0, err := ctxSwitches(shim)
	if err != nil {
		b.Fatal(err)
	}

	start := time.Now()
	if err := task.Start(ctx); err != nil {
		b.Fatalf("%s: start: %v", rt.Name, err)
	}
	var st containerd.ExitStatus
	select {
	case st = <-exitCh:
	case <-ctx.Done():
		b.Fatalf("%s: no exit within 5 minutes", rt.Name)
	}
	if code, _, err := st.Result(); err != nil || code != 0 {
		b.Fatalf("%s: %s exited with %d (%v)", rt.Name, args[0], code, err)
	}
	// Keel publishes the exit after the output is copied; a shim that does
	// not may still be copying, so the end is when both have arrived.
	switch mode {
	case "file":
		for {
			fi, err := os.Stat(logPath)
			if err != nil {
				b.Fatal(err)
			}
			if fi.Size() >= gib {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("%s: log file has %d bytes, want %d", rt.Name, fi.Size(), gib)
			}
			time.Sleep(time.Millisecond)
		}
	case "fifo":
		select {
		case <-counter.full:
		case <-ctx.Done():
			b.Fatalf("%s: read %d bytes, want %d", rt.Name, counter.n.Load(), gib)
		}
	}
	wall := time.Since(start)
	cpu1, err := cpuSeconds(shim)
	if err != nil {
		b.Fatal(err)
	}
	sw1, all1, err := ctxSwitches(shim)
	if err != nil {
		b.Fatal(err)
	}
	status, err := procKB(fmt.Sprintf("/proc/%d/status", shim), "VmHWM")
	if err != nil {
		b.Fatal(err)
	}

	if _, err := task.Delete(ctx); err != nil {
		b.Fatalf("%s: delete: %v", rt.Name, err)
	}
	deleted = true
	switch mode {
	case "file":
		fi, err := os.Stat(logPath)
		if err != nil {
			b.Fatal(err)
		}
		if fi.Size() != gib {
			b.Fatalf("%s: log file has %d bytes, want exactly %d", rt.Name, fi.Size(), gib)
		}
	case "fifo":
		task.IO().Wait()
		if n := counter.n.Load(); n != gib {
			b.Fatalf("%s: read %d bytes, want exactly %d", rt.Name, n, gib)
		}
	}
	return stdoutResult{wall: wall, cpu: cpu1 - cpu0, hwm: status["VmHWM"], shimSwitches: float64(sw1 - sw0), allSwitches: float64(all1 - all0)}
}
