//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// BenchmarkOverhead measures what a shim adds above the OCI runtime itself,
// for three operations, each timed through the containerd Go client from a
// container that already exists (metadata, snapshot and spec made, untimed):
//
//   - running: NewTask (containerd starts the shim, which mounts the rootfs
//     and runs `runc create`) and Start, until Start returns;
//   - cycle: NewTask, Wait, Start of `true`, its exit status, task Delete
//     (the shim unmounts, deletes and exits): create+start+exit;
//   - exec: Exec, Wait, Start of `true` in a running container, its exit
//     status and the exec process's Delete.
//
// The floor is the same work without containerd or a shim: with the same
// spec and a snapshot of the same image from the same daemon, the benchmark
// itself mounts the rootfs and runs runc (create, start, wait for the exit
// through a pidfd, delete, unmount; `runc exec` for exec). Rounds alternate
// floor, keel, runc and runc, keel, floor; every round runs -benchtime Nx of
// each. benchsum reports (keel-floor)/(runc-floor) for these rows: the share
// of the reference's overhead Keel costs. That overhead includes containerd's
// own (the same for both shims) and the client's round trips.
//
// The "-calls" rows count the runtime invocations of one more run of each
// operation, with BinaryName naming a script that logs them and execs runc
// (the floor runs through the same script).
func BenchmarkOverhead(b *testing.B) {
	forEachBenchVersion(b, func(b *testing.B, d *Daemon, rts []benchRuntime) {
		c, ctx := d.Client(b)
		realRunc, err := exec.LookPath("runc")
		if err != nil {
			b.Fatal(err)
		}
		o := &overhead{d: d, c: c, runc: realRunc, root: filepath.Join(d.Dir, "floor-runc"), dir: filepath.Join(d.Dir, "floor")}
		o.counter = filepath.Join(d.Dir, "count-runc")
		o.countLog = filepath.Join(d.Dir, "count-runc.log")
		script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\nexec %s \"$@\"\n", o.countLog, realRunc)
		if err := os.WriteFile(o.counter, []byte(script), 0o755); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(o.cleanup)
		all := append([]benchRuntime{{Name: "floor"}}, rts...)
		for _, op := range []string{"running", "cycle", "exec"} {
			b.Run(op, func(b *testing.B) {
				alternate(b, all, func(b *testing.B, rt benchRuntime) {
					var ms []float64
					for b.Loop() {
						ms = append(ms, o.run(ctx, b, rt, op, false).Seconds()*1e3)
					}
					b.ReportMetric(median(ms), "median-ms")
				})
			})
		}
		for _, op := range []string{"running", "cycle", "exec"} {
			b.Run(op+"-calls", func(b *testing.B) {
				for _, rt := range all {
					b.Run(rt.Name, func(b *testing.B) {
						var n float64
						for b.Loop() {
							o.run(ctx, b, rt, op, true)
							b.Logf("%s %s: %d runtime calls: %s", rt.Name, op, len(o.calls), strings.Join(o.calls, ", "))
							n = float64(len(o.calls))
						}
						b.ReportMetric(n, "runc-calls")
					})
				}
			})
		}
	})
}

// runcSubcommand is the first argument of a runc command line that is not
// a global flag or its value.
func runcSubcommand(line string) string {
	f := strings.Fields(line)
	for i := 0; i < len(f); i++ {
		switch {
		case f[i] == "--root" || f[i] == "--log" || f[i] == "--log-format" || f[i] == "--criu":
			i++
		case strings.HasPrefix(f[i], "-"):
		default:
			return f[i]
		}
	}
	return line
}

type overhead struct {
	d                 *Daemon
	c                 *containerd.Client
	runc              string // the real runc
	counter, countLog string // the counting wrapper and its log
	root, dir         string // the floor's runc --root and bundles
	floorIDs          []string
	calls             []string // the runtime subcommands of the last counted run
}

// mark starts counting runtime calls, if count; took ends it, right after
// the timed part of an operation, so that no set-up or teardown is counted.
func (o *overhead) mark(count bool) {
	if count {
		os.Remove(o.countLog)
	}
}

func (o *overhead) took(count bool) {
	if !count {
		return
	}
	data, _ := os.ReadFile(o.countLog)
	o.calls = nil
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if l != "" {
			o.calls = append(o.calls, runcSubcommand(l))
		}
	}
}

func (o *overhead) cleanup() {
	for _, id := range o.floorIDs {
		if _, err := os.Stat(filepath.Join(o.root, id)); err == nil {
			exec.Command(o.runc, "--root", o.root, "delete", "--force", id).Run()
		}
		mount.UnmountAll(filepath.Join(o.dir, id, "rootfs"), unix.MNT_DETACH)
	}
}

// container makes the container an operation starts from (untimed).
func (o *overhead) container(ctx context.Context, b *testing.B, rt benchRuntime, args []string, count bool) (containerd.Container, *specs.Spec) {
	b.Helper()
	img, err := o.c.GetImage(ctx, imageRef)
	if err != nil {
		b.Fatal(err)
	}
	id := o.d.NewID("oh-" + rt.Name)
	var ropts any
	if count && rt.Name != "floor" {
		ropts = &options.Options{BinaryName: o.counter}
	}
	runtime := rt.Runtime
	if rt.Name == "floor" {
		runtime = defaultRuntime // never started: only the spec and snapshot are used
	}
	cont, err := o.c.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithNewSnapshot(id, img),
		containerd.WithRuntime(runtime, ropts),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs(args...)))
	if err != nil {
		b.Fatal(err)
	}
	spec, err := cont.Spec(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cont.Delete(context.WithoutCancel(ctx), containerd.WithSnapshotCleanup) })
	return cont, spec
}

// run does one operation on rt and returns the time it took.
func (o *overhead) run(ctx context.Context, b *testing.B, rt benchRuntime, op string, count bool) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	args := []string{"true"}
	if op != "cycle" {
		args = []string{"sleep", "3600"}
	}
	cont, spec := o.container(ctx, b, rt, args, count)
	execSpec := *spec.Process
	execSpec.Args = []string{"true"}
	execSpec.Terminal = false
	if rt.Name == "floor" {
		return o.floor(ctx, b, cont, spec, &execSpec, op, count)
	}
	var el time.Duration
	switch op {
	case "running":
		o.mark(count)
		start := time.Now()
		task, err := cont.NewTask(ctx, cio.NullIO)
		if err != nil {
			b.Fatalf("%s: new task: %v", rt.Name, err)
		}
		if err := task.Start(ctx); err != nil {
			b.Fatalf("%s: start: %v", rt.Name, err)
		}
		el = time.Since(start)
		o.took(count)
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
			b.Fatalf("%s: delete: %v", rt.Name, err)
		}
	case "cycle":
		o.mark(count)
		start := time.Now()
		task, err := cont.NewTask(ctx, cio.NullIO)
		if err != nil {
			b.Fatalf("%s: new task: %v", rt.Name, err)
		}
		exitCh, err := task.Wait(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			b.Fatalf("%s: start: %v", rt.Name, err)
		}
		if st := <-exitCh; st.ExitCode() != 0 {
			b.Fatalf("%s: exit status %d (%v)", rt.Name, st.ExitCode(), st.Error())
		}
		if _, err := task.Delete(ctx); err != nil {
			b.Fatalf("%s: delete: %v", rt.Name, err)
		}
		el = time.Since(start)
		o.took(count)
	case "exec":
		task, err := cont.NewTask(ctx, cio.NullIO)
		if err != nil {
			b.Fatalf("%s: new task: %v", rt.Name, err)
		}
		defer task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
		if err := task.Start(ctx); err != nil {
			b.Fatalf("%s: start: %v", rt.Name, err)
		}
		o.mark(count)
		start := time.Now()
		p, err := task.Exec(ctx, "x", &execSpec, cio.NullIO)
		if err != nil {
			b.Fatalf("%s: exec: %v", rt.Name, err)
		}
		exitCh, err := p.Wait(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			b.Fatalf("%s: exec start: %v", rt.Name, err)
		}
		if st := <-exitCh; st.ExitCode() != 0 {
			b.Fatalf("%s: exec exit status %d (%v)", rt.Name, st.ExitCode(), st.Error())
		}
		if _, err := p.Delete(ctx); err != nil {
			b.Fatalf("%s: exec delete: %v", rt.Name, err)
		}
		el = time.Since(start)
		o.took(count)
	}
	return el
}

// floor does op with runc alone on cont's spec and snapshot.
func (o *overhead) floor(ctx context.Context, b *testing.B, cont containerd.Container, spec *specs.Spec, execSpec *specs.Process, op string, count bool) time.Duration {
	b.Helper()
	id := cont.ID()
	o.floorIDs = append(o.floorIDs, id)
	info, err := cont.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	mounts, err := o.c.SnapshotService(info.Snapshotter).Mounts(ctx, info.SnapshotKey)
	if err != nil {
		b.Fatal(err)
	}
	bundle := filepath.Join(o.dir, id)
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(rootfs, 0o711); err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(bundle)
	spec.Root = &specs.Root{Path: rootfs}
	writeJSON(b, filepath.Join(bundle, "config.json"), spec)
	writeJSON(b, filepath.Join(bundle, "exec.json"), execSpec)
	runc := o.runc
	if count {
		runc = o.counter
	}
	rc := func(args ...string) {
		b.Helper()
		// Stdio: /dev/null in, a file out (what runc create hands the
		// container: a pipe would keep cmd.Wait waiting for it to exit),
		// as NullIO gives the shims /dev/null.
		out, err := os.CreateTemp(bundle, "runc-out")
		if err != nil {
			b.Fatal(err)
		}
		defer out.Close()
		cmd := exec.CommandContext(ctx, runc, append([]string{"--root", o.root}, args...)...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil && args[0] != "kill" {
			msg, _ := os.ReadFile(out.Name())
			b.Fatalf("floor: runc %s: %v\n%s", strings.Join(args, " "), err, msg)
		}
	}
	pidFile := filepath.Join(bundle, "init.pid")
	start := func() int {
		if err := mount.All(mounts, rootfs); err != nil {
			b.Fatalf("floor: mount rootfs: %v", err)
		}
		rc("create", "--bundle", bundle, "--pid-file", pidFile, id)
		data, err := os.ReadFile(pidFile)
		if err != nil {
			b.Fatal(err)
		}
		var pid int
		fmt.Sscan(string(data), &pid)
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			b.Fatalf("floor: pidfd_open %d: %v", pid, err)
		}
		rc("start", id)
		return fd
	}
	waitFd := func(fd int) {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, 60_000); err != unix.EINTR {
				if err != nil {
					b.Fatalf("floor: poll pidfd: %v", err)
				}
				return
			}
		}
	}
	stop := func(fd int) {
		rc("kill", id, "KILL")
		waitFd(fd)
		rc("delete", id)
		if err := mount.UnmountAll(rootfs, 0); err != nil {
			b.Fatal(err)
		}
	}
	var el time.Duration
	switch op {
	case "running":
		o.mark(count)
		t0 := time.Now()
		fd := start()
		el = time.Since(t0)
		o.took(count)
		stop(fd)
	case "cycle":
		o.mark(count)
		t0 := time.Now()
		fd := start()
		waitFd(fd)
		rc("delete", id)
		if err := mount.UnmountAll(rootfs, 0); err != nil {
			b.Fatal(err)
		}
		el = time.Since(t0)
		o.took(count)
	case "exec":
		fd := start()
		o.mark(count)
		t0 := time.Now()
		rc("exec", "--process", filepath.Join(bundle, "exec.json"), id)
		el = time.Since(t0)
		o.took(count)
		stop(fd)
	}
	return el
}

func writeJSON(b *testing.B, path string, v any) {
	b.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
}
