//go:build linux

package integration

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keel-shim/keel/integration/imagebuild"
)

const imageRef = imagebuild.Ref

// TestRunImage runs a container from the imported image: the overlay mounts
// that the snapshotter prepares must reach the shim's Create and become /.
func TestRunImage(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		out, err := d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, imageRef, d.NewID("hello"), "echo", "hello")
		if err != nil {
			t.Fatal(err)
		}
		if out != "hello\n" {
			t.Fatalf("stdout %q, want %q", out, "hello\n")
		}
		out, err = d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, imageRef, d.NewID("mounts"), "cat", "/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		// mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE ...
		var rootType string
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && f[4] == "/" {
				for i, x := range f {
					if x == "-" && i+1 < len(f) {
						rootType = f[i+1]
					}
				}
			}
		}
		if rootType != "overlay" {
			t.Fatalf("container's / is %q, want the snapshotter's overlay; mountinfo:\n%s", rootType, out)
		}
	})
}

// TestRunRootfs runs a container on a plain directory (ctr --rootfs): no
// mounts reach the shim and the bundle's root is that directory.
func TestRunRootfs(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		rootfs := filepath.Join(t.TempDir(), "rootfs")
		if err := imagebuild.WriteRootfs(rootfs, imagebuild.DefaultBusybox); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 8)
		rand.Read(b)
		marker := hex.EncodeToString(b)
		if err := os.WriteFile(filepath.Join(rootfs, "marker"), []byte(marker), 0o644); err != nil {
			t.Fatal(err)
		}
		// Without an image there is no image config, hence no PATH: give one.
		out, err := d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, "--env", "PATH=/bin", "--rootfs", rootfs,
			d.NewID("rootfs"), "sh", "-c", "cat /marker; echo; echo from-container > /tmp/out")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != marker {
			t.Fatalf("stdout %q, want the marker %q from the rootfs dir", out, marker)
		}
		got, err := os.ReadFile(filepath.Join(rootfs, "tmp", "out"))
		if err != nil || string(got) != "from-container\n" {
			t.Fatalf("file written in the container: %q, %v; want it in the rootfs dir", got, err)
		}
	})
}

// TestRunExitCode checks that the init's exit status gets back to ctr.
func TestRunExitCode(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		_, err := d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, imageRef, d.NewID("exit42"), "sh", "-c", "exit 42")
		if code := exitCode(err); code != 42 {
			t.Fatalf("ctr run exit code %d (%v), want 42", code, err)
		}
	})
}

// TestRunMissingBinary checks that the runtime's own error reaches the user,
// and that the failed container leaves no shim behind.
func TestRunMissingBinary(t *testing.T) {
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		id := d.NewID("nobin")
		_, err := d.Ctr(t, "run", "--rm", "--runtime", d.Runtime, imageRef, id, "nosuchbinary")
		if err == nil {
			t.Fatal("ctr run of a missing binary succeeded")
		}
		if !strings.Contains(err.Error(), "executable file not found") {
			t.Fatalf("error does not carry runc's message %q: %v", "executable file not found", err)
		}
		if _, ok := d.Tasks(t)[id]; ok {
			t.Errorf("task %s still listed after the failed run", id)
		}
		waitNoShim(t, d, id)
	})
}

// waitNoShim polls until no shim process for id is left.
func waitNoShim(t testing.TB, d *Daemon, id string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(d.ShimPids(id)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("shim for %s still running 10s after its container was deleted: pids %v", id, d.ShimPids(id))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
