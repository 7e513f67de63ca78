//go:build linux

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/keel-shim/keel/integration/imagebuild"
)

// This file runs the rootfs mounts containerd's snapshotters hand a shim:
// an image of many layers (overlay options longer than a page), a remapped
// snapshot (idmapped where the snapshotter asks for it), a loop-mounted
// filesystem image, and a mount that fails part way.

// manyLayersRef is the image of 1+manyLayers layers.
const (
	manyLayersRef = "docker.io/library/busybox:keel-layers"
	manyLayers    = 79
)

// TestMountsManyLayers runs an 80-layer image: its overlay lowerdir option,
// under the test daemon's root, is longer than a page, which mount(2) does
// not take as it is.
func TestMountsManyLayers(t *testing.T) {
	requireSetup(t)
	archive := filepath.Join(t.TempDir(), "layers-oci.tar")
	if err := imagebuild.WriteLayeredOCIArchiveFile(archive, imagebuild.DefaultBusybox, manyLayersRef, manyLayers); err != nil {
		t.Fatal(err)
	}
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		if _, err := d.Ctr(t, "images", "import", archive); err != nil {
			t.Fatal(err)
		}
		c, ctx := d.Client(t)
		img, err := c.GetImage(ctx, manyLayersRef)
		if err != nil {
			t.Fatal(err)
		}
		id := d.NewID("layers")
		cont := newMountsContainer(t, d, c, ctx, id,
			[]containerd.NewContainerOpts{containerd.WithImage(img), containerd.WithNewSnapshot(id+"-snap", img)},
			oci.WithImageConfig(img),
			oci.WithProcessArgs("sh", "-c", fmt.Sprintf("ls /layers | wc -l; cat /%s /%s", imagebuild.LayerFile(1), imagebuild.LayerFile(manyLayers))))

		// What the shim is handed: one overlay whose options pass a page.
		info, err := cont.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mounts, err := c.SnapshotService(info.Snapshotter).Mounts(ctx, id+"-snap")
		if err != nil {
			t.Fatal(err)
		}
		if len(mounts) != 1 || mounts[0].Type != "overlay" {
			t.Fatalf("snapshot mounts are %+v, want one overlay", mounts)
		}
		size := len(strings.Join(mounts[0].Options, ","))
		t.Logf("overlay options of the %d-layer image: %d bytes (page: %d)", manyLayers+1, size, os.Getpagesize())
		if size <= os.Getpagesize() {
			t.Fatalf("overlay options are %d bytes, not longer than a page (%d): the test proves nothing here", size, os.Getpagesize())
		}

		code, out, err := optRun(t, ctx, cont)
		if err != nil {
			t.Fatalf("create the task of the %d-layer image: %v", manyLayers+1, err)
		}
		want := fmt.Sprintf("%d\n1\n%d\n", manyLayers, manyLayers)
		if code != 0 || out != want {
			t.Fatalf("the %d-layer container exited %d saying %q, want 0 and %q", manyLayers+1, code, out, want)
		}
	})
}

// remapBase is the host uid and gid that root of the remapped containers is.
const remapBase = 100000

// TestMountsRemappedSnapshot runs a user-namespaced container on a
// snapshot remapped to its ids. Where the overlay snapshotter can (2.x on
// a kernel with idmapped overlay) it leaves the layers as they are and asks
// for uidmap=/gidmap= options: the shim must mount the layers idmapped, so
// that through the rootfs the files belong to the mapped ids while on disk
// they stay root's. With containerd 1.x the client falls back to a chowned
// copy of the layers, and the shim mounts a plain overlay.
func TestMountsRemappedSnapshot(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		// The container's root is uid remapBase on the host: it must be able
		// to reach its bundle, under the daemon's private dir.
		if err := os.Chmod(d.Dir, 0o711); err != nil {
			t.Fatal(err)
		}
		c, ctx := d.Client(t)
		img, err := c.GetImage(ctx, imageRef)
		if err != nil {
			t.Fatal(err)
		}
		idmap := []specs.LinuxIDMapping{{ContainerID: 0, HostID: remapBase, Size: 65536}}
		id := d.NewID("remap")
		cont := newMountsContainer(t, d, c, ctx, id,
			[]containerd.NewContainerOpts{containerd.WithImage(img),
				containerd.WithNewSnapshot(id+"-snap", img, containerd.WithRemapperLabels(0, remapBase, 0, remapBase, 65536))},
			oci.WithImageConfig(img),
			oci.WithUserNamespace(idmap, idmap),
			oci.WithProcessArgs("sh", "-c", "stat -c %u:%g /bin/busybox; touch /tmp/new && stat -c %u:%g /tmp/new; echo ready; exec sleep 1000"))

		info, err := cont.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mounts, err := c.SnapshotService(info.Snapshotter).Mounts(ctx, id+"-snap")
		if err != nil {
			t.Fatal(err)
		}
		idmapped := false
		for _, m := range mounts {
			for _, o := range m.Options {
				idmapped = idmapped || strings.HasPrefix(o, "uidmap=")
			}
		}
		t.Logf("snapshot mounts: %+v", mounts)
		if !strings.HasPrefix(d.Version, "1.") && !idmapped {
			t.Fatalf("containerd %s's overlay snapshotter did not ask for an idmapped mount (no uidmap= option): is idmapped overlay supported here?", d.Version)
		}

		var out syncBuffer
		task, err := cont.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &out, &out)))
		if err != nil {
			t.Fatalf("create the user-namespaced task: %v", err)
		}
		defer task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
		if err := task.Start(ctx); err != nil {
			t.Fatalf("start the user-namespaced task: %v", err)
		}
		mountsWaitOutput(t, &out, "ready\n")
		// Inside the user namespace: root's files, and root makes new ones.
		if got, want := out.String(), "0:0\n0:0\nready\n"; got != want {
			t.Fatalf("inside the container: %q, want %q", got, want)
		}
		// Seen from the host through the container's rootfs: the mapped ids.
		root := fmt.Sprintf("/proc/%d/root", task.Pid())
		for _, f := range []string{"bin/busybox", "tmp/new"} {
			if uid, gid := mountsOwner(t, filepath.Join(root, f)); uid != remapBase || gid != remapBase {
				t.Errorf("/%s seen from the host through the rootfs belongs to %d:%d, want %d:%d", f, uid, gid, remapBase, remapBase)
			}
		}
		// On disk, in the top layer: root's own ids when idmapped; without,
		// the chowned copy's.
		lower := lowerdirs(mounts)
		if len(lower) == 0 {
			t.Fatalf("no lowerdir in the snapshot mounts %+v", mounts)
		}
		want := uint32(remapBase)
		if idmapped {
			want = 0
		}
		if uid, gid := mountsOwner(t, filepath.Join(lower[0], "bin/busybox")); uid != want || gid != want {
			t.Errorf("bin/busybox in the top layer on disk belongs to %d:%d, want %d:%d", uid, gid, want, want)
		}
		if !idmapped {
			t.Logf("containerd %s remaps snapshots by chowning a copy; no idmapped mount to check here", d.Version)
		}
	})
}

// TestMountsLoopRootfs runs a container whose rootfs is an ext4 image file
// mounted through a loop device ("loop" option, as the blockfile
// snapshotter emits), and checks the loop device goes with the container.
func TestMountsLoopRootfs(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		img := ext4Image(t)
		c, ctx := d.Client(t)
		id := d.NewID("loop")
		cont := newMountsContainer(t, d, c, ctx, id, nil,
			oci.WithDefaultPathEnv,
			oci.WithProcessArgs("sh", "-c", "grep ' / ' /proc/mounts | cut -d' ' -f2,3; cat /etc/passwd"))
		code, out, err := optRun(t, ctx, cont,
			containerd.WithRootFS([]mount.Mount{{Type: "ext4", Source: img, Options: []string{"rw", "loop"}}}))
		if err != nil {
			t.Fatalf("create the task on a loop-mounted rootfs: %v", err)
		}
		if want := "/ ext4\nroot:x:0:0:root:/root:/bin/sh\n"; code != 0 || out != want {
			t.Fatalf("the container exited %d saying %q, want 0 and %q", code, out, want)
		}
		waitNoLoop(t, img)
	})
}

// TestMountsMountManager hands containerd 2.2+'s mount manager a chain of
// mounts, as the erofs snapshotter does: a loop-mounted filesystem image,
// then a "format/bind" of it. The manager mounts the image itself and
// leaves the shim a bind mount of where it mounted it.
func TestMountsMountManager(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		if strings.HasPrefix(d.Version, "1.") {
			t.Skipf("containerd %s has no mount manager", d.Version)
		}
		img := ext4Image(t)
		c, ctx := d.Client(t)
		id := d.NewID("mgr")
		cont := newMountsContainer(t, d, c, ctx, id, nil,
			oci.WithDefaultPathEnv,
			oci.WithProcessArgs("sh", "-c", "grep ' / ' /proc/mounts | cut -d' ' -f2,3; cat /etc/passwd"))
		code, out, err := optRun(t, ctx, cont, containerd.WithRootFS([]mount.Mount{
			{Type: "ext4", Source: img, Options: []string{"rw", "loop"}},
			{Type: "format/bind", Source: "{{ mount 0 }}", Options: []string{"rbind", "rw"}},
		}))
		if err != nil {
			t.Fatalf("create the task: %v", err)
		}
		if want := "/ ext4\nroot:x:0:0:root:/root:/bin/sh\n"; code != 0 || out != want {
			t.Fatalf("the container exited %d saying %q, want 0 and %q", code, out, want)
		}
		if err := cont.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		// The manager lets the image go with the container.
		waitNoLoop(t, img)
	})
}

// TestMountsFuseRootfs runs a container on a rootfs mounted through a FUSE
// helper (type fuse3.fuse-overlayfs, as the fuse-overlayfs snapshotter
// emits): the shim runs mount.fuse3, whose daemon the shim, a subreaper,
// inherits. The mount and its daemon go with the container.
func TestMountsFuseRootfs(t *testing.T) {
	for _, bin := range []string{"mount.fuse3", "fuse-overlayfs"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed (Debian packages fuse3 and fuse-overlayfs): %v", bin, err)
		}
	}
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		dir := t.TempDir()
		lower, upper, work := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work")
		if err := imagebuild.WriteRootfs(lower, imagebuild.DefaultBusybox); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{upper, work} {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		c, ctx := d.Client(t)
		id := d.NewID("fuse")
		cont := newMountsContainer(t, d, c, ctx, id, nil,
			oci.WithDefaultPathEnv,
			oci.WithProcessArgs("sh", "-c", "grep ' / ' /proc/mounts | cut -d' ' -f2,3; echo written > /new"))
		code, out, err := optRun(t, ctx, cont, containerd.WithRootFS([]mount.Mount{{
			Type: "fuse3.fuse-overlayfs", Source: "overlay",
			Options: []string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work},
		}}))
		if err != nil {
			t.Fatalf("create the task on a fuse-overlayfs rootfs: %v", err)
		}
		if want := "/ fuse.fuse-overlayfs\n"; code != 0 || out != want {
			t.Fatalf("the container exited %d saying %q, want 0 and %q", code, out, want)
		}
		if b, err := os.ReadFile(filepath.Join(upper, "new")); err != nil || string(b) != "written\n" {
			t.Errorf("what the container wrote is not in the upperdir: %q, %v", b, err)
		}
		bundle := d.BundleDir(id)
		deadline := time.Now().Add(10 * time.Second)
		for len(mountsUnder(t, bundle)) > 0 || len(fuseDaemonsOf(upper)) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("10s after the task's deletion: mounts %v, fuse-overlayfs daemons %v", mountsUnder(t, bundle), fuseDaemonsOf(upper))
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// fuseDaemonsOf lists the fuse-overlayfs processes serving upper.
func fuseDaemonsOf(upper string) []int {
	var pids []int
	for _, pid := range allPids() {
		args := cmdline(pid)
		if len(args) > 0 && filepath.Base(args[0]) == "fuse-overlayfs" && strings.Contains(strings.Join(args, " "), "upperdir="+upper) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestMountsFailingMount hands the shim a rootfs whose second mount fails:
// the error names it, its type and the kernel's error, and nothing is left
// mounted, attached or in the bundle.
func TestMountsFailingMount(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		good := filepath.Join(t.TempDir(), "rootfs")
		if err := imagebuild.WriteRootfs(good, imagebuild.DefaultBusybox); err != nil {
			t.Fatal(err)
		}
		work := t.TempDir()
		missing := filepath.Join(work, "no-such-layer")
		notExt4 := filepath.Join(work, "zeros.img")
		if err := os.WriteFile(notExt4, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		// 80 layers, the last missing: options longer than a page.
		var layers []string
		for i := 80; i >= 1; i-- {
			l := filepath.Join(work, "io.containerd.snapshotter.v1.overlayfs", "snapshots", fmt.Sprint(i), "fs")
			if i < 80 {
				if err := os.MkdirAll(l, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			layers = append(layers, l)
		}
		c, ctx := d.Client(t)
		for _, tc := range []struct {
			name   string
			second mount.Mount
			want   []string
		}{
			{"overlay", mount.Mount{Type: "overlay", Source: "overlay",
				Options: []string{"lowerdir=" + missing + ":" + good}},
				[]string{"overlay", "no such file or directory"}},
			{"many-layers", mount.Mount{Type: "overlay", Source: "overlay",
				Options: []string{"lowerdir=" + strings.Join(layers, ":")}},
				[]string{"overlay", "no such file or directory"}},
			{"loop", mount.Mount{Type: "ext4", Source: notExt4, Options: []string{"ro", "loop"}},
				[]string{"ext4", notExt4, "invalid argument"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				id := d.NewID("badmount")
				cont := newMountsContainer(t, d, c, ctx, id, nil, oci.WithDefaultPathEnv, oci.WithProcessArgs("true"))
				_, _, err := optRun(t, ctx, cont, containerd.WithRootFS([]mount.Mount{
					{Type: "bind", Source: good, Options: []string{"rbind", "ro"}},
					tc.second,
				}))
				if err == nil {
					t.Fatal("the task was created on a rootfs whose second mount cannot be mounted")
				}
				t.Logf("NewTask: %v", err)
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("the error does not say %q: %v", w, err)
					}
				}
				waitNoShim(t, d, id)
				bundle := d.BundleDir(id)
				if ms := mountsUnder(t, bundle); len(ms) > 0 {
					t.Errorf("mounts left in the bundle %s: %v", bundle, ms)
				}
				if ms := mountsUnder(t, good); len(ms) > 0 {
					t.Errorf("mounts left of the first mount's source: %v", ms)
				}
				if _, err := os.Stat(bundle); !os.IsNotExist(err) {
					entries, _ := os.ReadDir(bundle)
					t.Errorf("the bundle is still there after the failed create (stat: %v), holding %d entries", err, len(entries))
				}
				waitNoLoop(t, notExt4)
			})
		}
	})
}

// newMountsContainer creates a container of the given options and spec,
// with a task and snapshot removed when t ends.
func newMountsContainer(t *testing.T, d *Daemon, c *containerd.Client, ctx context.Context, id string, opts []containerd.NewContainerOpts, specOpts ...oci.SpecOpts) containerd.Container {
	t.Helper()
	opts = append(opts, containerd.WithRuntime(d.Runtime, nil),
		containerd.WithNewSpec(append(specOpts, d.clientSpecOpts()...)...))
	cont, err := c.NewContainer(ctx, id, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if task, err := cont.Task(ctx, nil); err == nil {
			task.Delete(ctx, containerd.WithProcessKill)
		}
		if err := cont.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			t.Logf("cleanup: delete container %s: %v", id, err)
		}
	})
	return cont
}

// mountsWaitOutput waits until out ends with suffix.
func mountsWaitOutput(t *testing.T, out *syncBuffer, suffix string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.HasSuffix(out.String(), suffix) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output within 15s; output: %q", suffix, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mountsOwner is the uid and gid of path (not following a last symlink).
func mountsOwner(t *testing.T, path string) (uint32, uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

// lowerdirs are the overlay layers of mounts, top first; a bind mount's
// source counts as its one layer.
func lowerdirs(mounts []mount.Mount) []string {
	for _, m := range mounts {
		if m.Type == "bind" {
			return []string{m.Source}
		}
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				return strings.Split(v, ":")
			}
		}
	}
	return nil
}

// ext4Image makes an ext4 filesystem image holding the busybox rootfs.
func ext4Image(t *testing.T) string {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		skipOrFail(t, "mkfs.ext4 is not installed (e2fsprogs): %v", err)
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := imagebuild.WriteRootfs(tree, imagebuild.DefaultBusybox); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", tree, img, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

// waitNoLoop waits until no loop device is backed by file: the kernel
// frees an autoclear loop device once its last mount is gone.
func waitNoLoop(t *testing.T, file string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		devs := loopsBacking(t, file)
		if len(devs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("loop devices still attached to %s: %v", file, devs)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// loopsBacking lists the loop devices whose backing file is file.
func loopsBacking(t *testing.T, file string) []string {
	t.Helper()
	paths, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		t.Fatal(err)
	}
	var devs []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // detached meanwhile
		}
		if strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)") == file {
			devs = append(devs, strings.Split(p, "/")[3])
		}
	}
	return devs
}
