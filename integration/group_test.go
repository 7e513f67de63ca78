//go:build linux

package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// Containers whose OCI spec carries the same value of a group annotation
// share one shim: runc's shim honours the first, Keel both.
const (
	groupAnnotation     = "io.containerd.runc.v2.group"
	keelGroupAnnotation = "io.containerd.keel.v2.group"
)

// TestStressGroupCycles runs 200 short containers, one after the other, in
// the shim of a long-running "keeper" container of the same group (named
// by either annotation): each must run below that shim, with no shim of its
// own, and report its own exit status and output. The
// shim's fds and goroutines must come back to where they were and its live
// heap stay flat; no zombie, process, mount, FIFO, bundle, runc state or
// cgroup of a deleted container may be left.
func TestStressGroupCycles(t *testing.T) {
	stressVersions(t, func(t *testing.T, d *Daemon) {
		const warmUp, cycles = 10, 200
		c, ctx := d.Client(t)
		ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		b := make([]byte, 4)
		rand.Read(b)
		group := "group-" + hex.EncodeToString(b)
		inGroup := oci.WithAnnotations(map[string]string{groupAnnotation: group})
		// With Keel, every other short container names the group with
		// Keel's own annotation.
		inKeelGroup := inGroup
		if isKeel(d) {
			inKeelGroup = oci.WithAnnotations(map[string]string{keelGroupAnnotation: group})
		}

		keeper := d.NewID("keeper")
		kc := newClientContainer(t, d, c, ctx, keeper, nil, 0, oci.WithProcessArgs("sleep", "100000"), inGroup)
		ktask, err := kc.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatal(err)
		}
		if err := ktask.Start(ctx); err != nil {
			t.Fatal(err)
		}
		keeperPid := int(ktask.Pid())
		shim, sockets := shimAndSockets(t, d, keeper, keeperPid)
		addr := bundleAddress(t, d, keeper)
		fifoDir := filepath.Join(d.Dir, "fifo")

		var ids []string
		cycle := func(i int) {
			t.Helper()
			id := d.NewID(fmt.Sprintf("short%d", i))
			ids = append(ids, id)
			code := uint32(i % 100)
			want := fmt.Sprintf("cycle %d\n", i)
			annotation := inGroup
			if i%2 == 1 {
				annotation = inKeelGroup
			}
			cont := newClientContainer(t, d, c, ctx, id, nil, 0,
				oci.WithProcessArgs("sh", "-c", fmt.Sprintf("echo cycle %d; exit %d", i, code)), annotation)
			var out, errb syncBuffer
			task, err := cont.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &out, &errb), cio.WithFIFODir(fifoDir)))
			if err != nil {
				t.Fatalf("cycle %d: create %s: %v", i, id, err)
			}
			// Created, not started: runc's init waits below the shim
			// that runs the container.
			pid := int(task.Pid())
			var ppid int
			if !pollUntil(5*time.Second, func() bool {
				st, err := readStat(pid)
				ppid = st.Ppid
				return err == nil && ppid == shim
			}) {
				t.Fatalf("cycle %d: the init %d of %s has parent %d (%q), not the group's shim %d", i, pid, id, ppid, cmdline(ppid), shim)
			}
			if a := bundleAddress(t, d, id); a != addr {
				t.Fatalf("cycle %d: containerd talks to %s's shim at %s, the group's shim is at %s", i, id, a, addr)
			}
			if own := d.ShimPids(id); len(own) > 0 {
				t.Fatalf("cycle %d: shim processes of %s's own: %v (the group's shim is %d)", i, id, own, shim)
			}
			exitC, err := task.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := task.Start(ctx); err != nil {
				t.Fatalf("cycle %d: start %s: %v", i, id, err)
			}
			if got := waitExit(t, id, exitC); got != code {
				t.Fatalf("cycle %d: %s exited with %d, want %d", i, id, got, code)
			}
			if !waitOutput(&out, want) || errb.String() != "" {
				t.Fatalf("cycle %d: %s wrote %q on stdout, %q on stderr; want %q and nothing", i, id, out.String(), errb.String(), want)
			}
			st, err := task.Delete(ctx)
			if err != nil {
				t.Fatalf("cycle %d: delete task %s: %v", i, id, err)
			}
			if st.ExitCode() != code {
				t.Fatalf("cycle %d: deleting %s reports exit %d, want %d", i, id, st.ExitCode(), code)
			}
			if err := cont.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
				t.Fatalf("cycle %d: delete container %s: %v", i, id, err)
			}
		}

		// A few cycles first, so that pools and lazily made state count
		// as the baseline rather than as a leak.
		for i := 0; i < warmUp; i++ {
			cycle(i)
		}
		before := d.shimUsage(t, shim)
		start := time.Now()
		for i := warmUp; i < warmUp+cycles; i++ {
			cycle(i)
		}
		took := time.Since(start)
		// shimUsage counts the fds, then has the shim collect garbage:
		// what it holds by kind, on both sides of that collection.
		heldBeforeGC := fdSummary(shim)
		after := d.shimUsage(t, shim)
		heldAfterGC := fdSummary(shim)
		t.Logf("%d grouped container cycles in %s: before %v; after %v", cycles, took.Round(time.Second), before, after)
		t.Logf("the shim's fds after the cycles: %s; after its garbage collection: %s", heldBeforeGC, heldAfterGC)
		// A leak per container would show as hundreds of fds; a slack of 3
		// covers containerd's connections (16 before and after in CI runs).
		if after.fds > before.fds+3 || after.goroutines > before.goroutines {
			hint := ""
			if strings.Contains(heldBeforeGC, reapedPidfd) {
				hint = " (" + reapedPidfd + ": an os.Process handle of a runtime or logger process that the shim's reaper reaped, which cmd.Wait, failing with ECHILD, does not release: only a garbage collection closes it)"
			}
			t.Errorf("leak after %d containers in the group's shim: before %v, after %v; the shim's fds: %s; after its garbage collection: %s%s",
				cycles, before, after, heldBeforeGC, heldAfterGC, hint)
		}
		if after.heapKB > before.heapKB+512 {
			t.Errorf("live heap grew by %d kB over %d containers: before %v, after %v", after.heapKB-before.heapKB, cycles, before, after)
		}

		// Below the shim: the keeper's init, nothing else.
		for _, pid := range descendants(shim) {
			st, err := readStat(pid)
			if err != nil {
				continue // gone meanwhile
			}
			if st.State == 'Z' {
				t.Errorf("zombie %d (%s) below the shim", pid, st.Comm)
			} else if pid != keeperPid {
				t.Errorf("process %d (%s, %q) below the shim, besides the keeper's init %d", pid, st.Comm, cmdline(pid), keeperPid)
			}
		}
		if tasks := d.Tasks(t); len(tasks) != 1 || tasks[keeper].Status != "RUNNING" {
			t.Errorf("tasks after the cycles: %v, want the keeper's alone, running", tasks)
		}
		checkNothingLeft(t, d, shim, ids, fifoDir)

		// The group's last container gone, the shim exits.
		kexit, err := ktask.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ktask.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitExit(t, keeper, kexit)
		if _, err := ktask.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		waitShimGone(t, d, keeper, shim, sockets)
	})
}

// checkNothingLeft fails for whatever remains of the deleted containers
// ids: a mount (in the test's mount namespace or the shim's) or FIFO
// naming one, a bundle dir, runc state or cgroup; and for any FIFO dir
// left in fifoDir, where the client made them.
func checkNothingLeft(t *testing.T, d *Daemon, shim int, ids []string, fifoDir string) {
	t.Helper()
	named := func(s string) string {
		for _, id := range ids {
			if strings.Contains(s, id) {
				return id
			}
		}
		return ""
	}
	for _, mi := range []string{"/proc/self/mountinfo", fmt.Sprintf("/proc/%d/mountinfo", shim)} {
		data, err := os.ReadFile(mi)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if id := named(unescapeMount(line)); id != "" {
				t.Errorf("%s still mounts something of deleted container %s: %s", mi, id, line)
			}
		}
	}
	if left, err := os.ReadDir(fifoDir); err != nil || len(left) > 0 {
		t.Errorf("FIFO dir %s after the deletions: %v, %v; want it empty", fifoDir, left, err)
	}
	// ctr's and the client's default FIFO dir, whoever used it.
	if dirs, err := filepath.Glob("/run/containerd/fifo/*/*"); err == nil {
		for _, f := range dirs {
			if id := named(filepath.Base(f)); id != "" {
				t.Errorf("FIFO %s of deleted container %s left", f, id)
			}
		}
	}
	cgroupRoots, _ := filepath.Glob("/sys/fs/cgroup/*")
	cgroupRoots = append(cgroupRoots, "/sys/fs/cgroup")
	var paths []string
	for _, id := range ids {
		paths = append(paths, d.BundleDir(id), filepath.Join("/run/containerd/runc", d.Namespace, id))
		for _, r := range cgroupRoots {
			paths = append(paths, filepath.Join(r, d.Namespace, id))
		}
	}
	for _, p := range slices.Compact(paths) {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after its container's deletion (%v)", p, err)
		}
	}
}

// reapedPidfd is how fdSummary names a pidfd whose process is gone.
const reapedPidfd = "pidfd of a reaped process"

// fdSummary counts a process's open fds by what they are: "socket",
// "pipe", "anon_inode:[eventpoll]", reapedPidfd, or the file's path.
func fdSummary(pid int) string {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return err.Error()
	}
	counts := map[string]int{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		if i := strings.Index(link, ":["); i > 0 && !strings.HasPrefix(link, "anon_inode") {
			link = link[:i]
		}
		if link == "anon_inode:[pidfd]" {
			// fdinfo says "Pid: -1" once the process is reaped.
			info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
			if strings.Contains(string(info), "\nPid:\t-1\n") {
				link = reapedPidfd
			}
		}
		counts[link]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s x%d; ", k, counts[k])
	}
	return strings.TrimSuffix(b.String(), "; ")
}
