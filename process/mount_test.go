//go:build linux

package process

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests mount for real: they need root, and skip without it.

func mntRequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
}

// mntTarget is a mount target that is unmounted (whatever MountAll left)
// before the temp dirs are removed.
func mntTarget(t *testing.T) string {
	t.Helper()
	target := filepath.Join(t.TempDir(), "rootfs")
	t.Cleanup(func() { _ = UnmountAll(target) })
	return target
}

// mntSnapshotDirs makes n layer dirs laid out as containerd's overlay
// snapshotter lays them out, each holding a file "layerN" with content N,
// plus an upper and a work dir. It returns the layers top first.
func mntSnapshotDirs(t *testing.T, n int) (lowers []string, upper, work string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "io.containerd.snapshotter.v1.overlayfs", "snapshots")
	for i := n; i >= 1; i-- {
		fs := filepath.Join(root, strconv.Itoa(i), "fs")
		if err := os.MkdirAll(fs, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(fs, "layer"+strconv.Itoa(i)), []byte(strconv.Itoa(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		lowers = append(lowers, fs)
	}
	upper = filepath.Join(root, strconv.Itoa(n+1), "fs")
	work = filepath.Join(root, strconv.Itoa(n+1), "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return lowers, upper, work
}

func mntOverlay(lowers []string, upper, work string, extra ...string) Mount {
	opts := append([]string{"index=off"}, extra...)
	if upper != "" {
		opts = append(opts, "workdir="+work, "upperdir="+upper)
	}
	return Mount{Type: "overlay", Source: "overlay", Options: append(opts, "lowerdir="+strings.Join(lowers, ":"))}
}

// mntPoints lists the mount points at or under dir, in this process's
// mount namespace.
func mntPoints(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mps = append(mps, f[4])
		}
	}
	return mps
}

// mntSource is the source (field after " - type") of the topmost mount
// on dir.
func mntSource(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	src := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			if _, post, ok := strings.Cut(line, " - "); ok {
				if pf := strings.Fields(post); len(pf) > 1 {
					src = pf[1]
				}
			}
		}
	}
	return src
}

func mntRequireUnmounted(t *testing.T, dir string) {
	t.Helper()
	if mps := mntPoints(t, dir); len(mps) > 0 {
		t.Fatalf("still mounted at or under %s: %v", dir, mps)
	}
}

func mntRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mntOwner(t *testing.T, path string) (uint32, uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

// TestMountAllManyLayers mounts an 80-layer overlay whose options are
// longer than a page: mount(2) takes at most a page of data.
func TestMountAllManyLayers(t *testing.T) {
	mntRequireRoot(t)
	lowers, upper, work := mntSnapshotDirs(t, 80)
	m := mntOverlay(lowers, upper, work)
	if size := len(strings.Join(m.Options, ",")); size <= os.Getpagesize() {
		t.Fatalf("options are %d bytes, not more than a page (%d)", size, os.Getpagesize())
	}
	target := mntTarget(t)
	if err := MountAll([]Mount{m}, target); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 80; i++ {
		if got := mntRead(t, filepath.Join(target, "layer"+strconv.Itoa(i))); got != strconv.Itoa(i) {
			t.Fatalf("layer%d reads %q through the overlay", i, got)
		}
	}
	if err := os.WriteFile(filepath.Join(target, "new"), []byte("x"), 0o644); err != nil {
		t.Fatalf("the overlay is not writable: %v", err)
	}
	if _, err := os.Stat(filepath.Join(upper, "new")); err != nil {
		t.Fatalf("a file written through the overlay is not in the upperdir: %v", err)
	}
	if err := UnmountAll(target); err != nil {
		t.Fatal(err)
	}
	mntRequireUnmounted(t, target)
}

// mntRemapID is the host id that root of the remapped mounts is.
const mntRemapID = 100000

var mntIDMapOptions = []string{
	fmt.Sprintf("uidmap=0:%d:65536", mntRemapID),
	fmt.Sprintf("gidmap=0:%d:65536", mntRemapID),
}

// mntIdmappedTemps lists the temporary idmapped mounts of the layers that
// core/mount makes while it mounts an idmapped overlay.
func mntIdmappedTemps(t *testing.T) []string {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "ovl-idmapped*"))
	return dirs
}

// TestMountAllIdmapped mounts what containerd 2.x's overlay snapshotter
// emits for a remapped snapshot: uidmap=/gidmap= options, which must make
// the layers idmapped (not go to mount(2) as data). Through the mount the
// files belong to the mapped ids; on disk they stay root's.
func TestMountAllIdmapped(t *testing.T) {
	mntRequireRoot(t)
	tempsBefore := len(mntIdmappedTemps(t))
	check := func(t *testing.T, target string, files ...string) {
		t.Helper()
		for _, f := range files {
			if uid, gid := mntOwner(t, filepath.Join(target, f)); uid != mntRemapID || gid != mntRemapID {
				t.Errorf("%s through the mount belongs to %d:%d, want %d:%d", f, uid, gid, mntRemapID, mntRemapID)
			}
		}
	}
	t.Run("overlay", func(t *testing.T) {
		lowers, upper, work := mntSnapshotDirs(t, 3)
		// As the snapshotter leaves a remapped snapshot's upperdir.
		if err := os.Chown(upper, mntRemapID, mntRemapID); err != nil {
			t.Fatal(err)
		}
		target := mntTarget(t)
		if err := MountAll([]Mount{mntOverlay(lowers, upper, work, mntIDMapOptions...)}, target); err != nil {
			t.Fatal(err)
		}
		check(t, target, "layer1", "layer2", "layer3", ".")
		for _, l := range lowers {
			if uid, gid := mntOwner(t, l); uid != 0 || gid != 0 {
				t.Errorf("layer %s on disk belongs to %d:%d, want 0:0", l, uid, gid)
			}
		}
		if err := UnmountAll(target); err != nil {
			t.Fatal(err)
		}
		mntRequireUnmounted(t, target)
	})
	t.Run("many-layers", func(t *testing.T) {
		lowers, upper, work := mntSnapshotDirs(t, 80)
		if err := os.Chown(upper, mntRemapID, mntRemapID); err != nil {
			t.Fatal(err)
		}
		target := mntTarget(t)
		if err := MountAll([]Mount{mntOverlay(lowers, upper, work, mntIDMapOptions...)}, target); err != nil {
			t.Fatal(err)
		}
		check(t, target, "layer1", "layer80")
		if err := UnmountAll(target); err != nil {
			t.Fatal(err)
		}
		mntRequireUnmounted(t, target)
	})
	t.Run("bind", func(t *testing.T) {
		// A remapped snapshot with no parent is a bind mount.
		lowers, _, _ := mntSnapshotDirs(t, 1)
		target := mntTarget(t)
		if err := MountAll([]Mount{{Type: "bind", Source: lowers[0], Options: append([]string{"rw", "rbind"}, mntIDMapOptions...)}}, target); err != nil {
			t.Fatal(err)
		}
		check(t, target, "layer1", ".")
		if uid, _ := mntOwner(t, filepath.Join(lowers[0], "layer1")); uid != 0 {
			t.Errorf("layer1 on disk belongs to uid %d, want 0", uid)
		}
		if err := UnmountAll(target); err != nil {
			t.Fatal(err)
		}
		mntRequireUnmounted(t, target)
	})
	if n := len(mntIdmappedTemps(t)); n > tempsBefore {
		t.Errorf("temporary idmapped mount dirs left in %s: %v", os.TempDir(), mntIdmappedTemps(t))
	}
}

// mntExt4Image makes a small ext4 image holding the file "hello".
func mntExt4Image(t *testing.T) string {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skipf("mkfs.ext4 (e2fsprogs) is not installed: %v", err)
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "hello"), []byte("from ext4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "fs.ext4")
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", tree, img, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

// mntLoopsOf lists the loop devices backed by file.
func mntLoopsOf(file string) []string {
	paths, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var devs []string
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == file {
			devs = append(devs, strings.Split(p, "/")[3])
		}
	}
	return devs
}

// mntRequireNoLoop waits for the kernel to free the autoclear loop devices of
// file, which it does once their last user is gone.
func mntRequireNoLoop(t *testing.T, file string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(mntLoopsOf(file)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("loop devices still attached to %s: %v", file, mntLoopsOf(file))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMountAllLoop mounts a filesystem image through a loop device, as the
// blockfile snapshotter asks with "loop" (and "direct-io").
func TestMountAllLoop(t *testing.T) {
	mntRequireRoot(t)
	for _, tc := range []struct {
		name    string
		options []string
		dio     string
	}{
		{"rw", []string{"rw", "loop"}, "0"},
		{"ro-direct-io", []string{"ro", "loop", "direct-io"}, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := mntExt4Image(t)
			target := mntTarget(t)
			if err := MountAll([]Mount{{Type: "ext4", Source: img, Options: tc.options}}, target); err != nil {
				t.Fatal(err)
			}
			if got := mntRead(t, filepath.Join(target, "hello")); got != "from ext4\n" {
				t.Fatalf("hello reads %q", got)
			}
			devs := mntLoopsOf(img)
			if len(devs) != 1 || mntSource(t, target) != "/dev/"+devs[0] {
				t.Fatalf("mounted from %q; loop devices of the image: %v", mntSource(t, target), devs)
			}
			if dio := strings.TrimSpace(mntRead(t, "/sys/block/"+devs[0]+"/loop/dio")); dio != tc.dio {
				t.Errorf("direct I/O of %s is %s, want %s", devs[0], dio, tc.dio)
			}
			if err := UnmountAll(target); err != nil {
				t.Fatal(err)
			}
			mntRequireUnmounted(t, target)
			mntRequireNoLoop(t, img)
		})
	}
}

// TestMountAllTarget stacks a mount on a directory inside an earlier one
// (Mount.Target), and keeps a Target that climbs out inside the rootfs.
func TestMountAllTarget(t *testing.T) {
	mntRequireRoot(t)
	base, sub := t.TempDir(), t.TempDir()
	for _, d := range []string{filepath.Join(base, "sub"), filepath.Join(base, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(sub, "inner"), []byte("inner"), 0o644); err != nil {
		t.Fatal(err)
	}
	target := mntTarget(t)
	err := MountAll([]Mount{
		{Type: "bind", Source: base, Options: []string{"rbind", "rw"}},
		{Type: "bind", Source: sub, Target: "/sub", Options: []string{"rbind", "ro"}},
		{Type: "bind", Source: sub, Target: "../../etc", Options: []string{"rbind", "ro"}},
	}, target)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"sub/inner", "etc/inner"} {
		if got := mntRead(t, filepath.Join(target, p)); got != "inner" {
			t.Fatalf("%s reads %q", p, got)
		}
	}
	if err := os.WriteFile(filepath.Join(target, "sub", "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("writing to the read-only submount: %v, want EROFS", err)
	}
	if err := UnmountAll(target); err != nil {
		t.Fatal(err)
	}
	mntRequireUnmounted(t, target)
}

// TestMountAllFailure makes the last of several mounts fail: the error
// names the mount, its type and the kernel's error, and what was mounted
// before it (and any loop device or idmapped layer made for it) is gone.
func TestMountAllFailure(t *testing.T) {
	mntRequireRoot(t)
	good := t.TempDir()
	lowers, upper, work := mntSnapshotDirs(t, 80)
	// A layer missing among the others, in the snapshotter's directory.
	missing := filepath.Join(filepath.Dir(filepath.Dir(lowers[0])), "999", "fs")
	zeros := filepath.Join(t.TempDir(), "zeros.img")
	if err := os.WriteFile(zeros, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	tempsBefore := len(mntIdmappedTemps(t))
	for _, tc := range []struct {
		name  string
		bad   Mount
		errno unix.Errno
		want  []string
	}{
		{"overlay", mntOverlay([]string{missing, good}, "", ""), unix.ENOENT,
			[]string{"mount 2 of 2 (type overlay, source overlay)", "no such file or directory"}},
		{"overlay-many-layers", mntOverlay(append(lowers, missing), upper, work), unix.ENOENT,
			[]string{"mount 2 of 2 (type overlay, source overlay)", "no such file or directory"}},
		{"idmapped-overlay", mntOverlay([]string{lowers[0], missing}, upper, work, mntIDMapOptions...), unix.ENOENT,
			[]string{"mount 2 of 2 (type overlay, source overlay)", "no such file or directory"}},
		{"loop", Mount{Type: "ext4", Source: zeros, Options: []string{"ro", "loop"}}, unix.EINVAL,
			[]string{"mount 2 of 2 (type ext4, source " + zeros + ")", "invalid argument"}},
		{"bind", Mount{Type: "bind", Source: missing, Options: []string{"rbind"}}, unix.ENOENT,
			[]string{"mount 2 of 2 (type bind, source " + missing + ")", "no such file or directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := mntTarget(t)
			err := MountAll([]Mount{{Type: "bind", Source: good, Options: []string{"rbind", "ro"}}, tc.bad}, target)
			if err == nil {
				t.Fatal("MountAll succeeded")
			}
			t.Logf("%v", err)
			var me *MountError
			if !errors.As(err, &me) || me.Index != 1 || me.CleanupErr != nil {
				t.Errorf("error is %#v, want a *MountError for mounts[1] with a clean cleanup", err)
			}
			if !errors.Is(err, tc.errno) {
				t.Errorf("error does not carry the kernel's %v", tc.errno)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q", w)
				}
			}
			if !strings.Contains(err.Error(), target) {
				t.Errorf("error does not name the rootfs %s", target)
			}
			if len(err.Error()) > 2*maxDetail {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
			mntRequireUnmounted(t, target)
			mntRequireNoLoop(t, zeros)
		})
	}
	if n := len(mntIdmappedTemps(t)); n > tempsBefore {
		t.Errorf("temporary idmapped mount dirs left in %s: %v", os.TempDir(), mntIdmappedTemps(t))
	}
}

// TestMountAllInternalOption refuses an option meant for containerd's mount
// manager (it would have consumed it), rather than mount without its effect.
func TestMountAllInternalOption(t *testing.T) {
	mntRequireRoot(t)
	target := mntTarget(t)
	err := MountAll([]Mount{{Type: "bind", Source: t.TempDir(), Options: []string{"rbind", "X-containerd.mkdir.path=/x/upper:0755"}}}, target)
	if err == nil || !strings.Contains(err.Error(), "X-containerd.mkdir.path") {
		t.Fatalf("MountAll: %v, want an error naming the option", err)
	}
	mntRequireUnmounted(t, target)
}

// TestMountAllFuseOverlay mounts through a FUSE helper, as containerd's
// fuse-overlayfs snapshotter asks with type fuse3.fuse-overlayfs.
func TestMountAllFuseOverlay(t *testing.T) {
	mntRequireRoot(t)
	for _, bin := range []string{"mount.fuse3", "fuse-overlayfs"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed (Debian: fuse3, fuse-overlayfs): %v", bin, err)
		}
	}
	lowers, upper, work := mntSnapshotDirs(t, 3)
	m := mntOverlay(lowers, upper, work)
	m.Type, m.Options = "fuse3.fuse-overlayfs", m.Options[1:] // no index=off: a kernel overlay option
	target := mntTarget(t)
	if err := MountAll([]Mount{m}, target); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil || st.Type != unix.FUSE_SUPER_MAGIC {
		t.Fatalf("not a FUSE mount: statfs type %#x, %v", st.Type, err)
	}
	if got := mntRead(t, filepath.Join(target, "layer2")); got != "2" {
		t.Fatalf("layer2 reads %q", got)
	}
	if err := UnmountAll(target); err != nil {
		t.Fatal(err)
	}
	mntRequireUnmounted(t, target)
}
