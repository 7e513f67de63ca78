//go:build linux

package process

import (
	"fmt"
	"os"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// Mount is one rootfs mount as containerd sends it in the task's Rootfs:
// what its snapshotter emitted (overlay, bind, a filesystem image with
// "loop", a fuse3.* helper type), or what containerd 2.2+'s mount manager
// leaves to the shim once it has activated the rest.
type Mount struct {
	Type, Source string
	// Target is where under the rootfs this mount goes, for a mount that
	// stacks inside an earlier one; "" is the rootfs itself.
	Target  string
	Options []string
}

// MountAll mounts the rootfs mounts, in order, on target. On failure it
// leaves nothing mounted and the error is a *MountError.
//
// The mounting itself is containerd's (core/mount), as in containerd's own
// shims, so that Keel takes what the snapshotters emit: overlay options
// longer than a page (relative lowerdirs from their common parent),
// uidmap=/gidmap= (idmapped layers, or an idmapped bind), "loop" and
// "direct-io" (a loop device, cleared with its last mount), fuse./fuse3.
// types (through mount.fuse / mount.fuse3), and mount(2) flags. The FUSE
// helper, and the short-lived child whose user namespace an idmapped mount
// takes, are children of the shim, which its reaper also waits for:
// core/mount retries a helper whose exit status the reaper took (ECHILD),
// and needs none from the other.
func MountAll(mounts []Mount, target string) error {
	if err := os.MkdirAll(target, 0o711); err != nil {
		return err
	}
	for i, m := range mounts {
		cm := mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options}
		if err := cm.Mount(target); err != nil {
			e := &MountError{Index: i, Count: len(mounts), Mount: m, Rootfs: target, Err: err}
			// Whatever of this or earlier mounts is there; a loop device
			// goes with its last mount.
			e.CleanupErr = UnmountAll(target)
			return e
		}
	}
	return nil
}

// MountError is a rootfs mount that failed: which one, and why (the
// kernel's error is in Err's chain, as a unix.Errno, when it is one).
type MountError struct {
	Index, Count int // the failed mount is mounts[Index] of Count
	Mount        Mount
	Rootfs       string
	Err          error
	// CleanupErr is set if what was mounted before could not be unmounted.
	CleanupErr error
}

// maxDetail bounds how much of core/mount's error a MountError shows: for
// mount(2) it quotes the whole data string, several KiB for a many-layer
// overlay. Its end, which holds the kernel's error, is always kept.
const maxDetail = 1024

func (e *MountError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mount %d of %d (type %s, source %s", e.Index+1, e.Count, e.Mount.Type, e.Mount.Source)
	if e.Mount.Target != "" {
		fmt.Fprintf(&b, ", target %s", e.Mount.Target)
	}
	fmt.Fprintf(&b, ") on %s: %s", e.Rootfs, elide(e.Err.Error(), maxDetail))
	if e.CleanupErr != nil {
		fmt.Fprintf(&b, "; then unmounting what was mounted: %v", e.CleanupErr)
	}
	return b.String()
}

func (e *MountError) Unwrap() error { return e.Err }

// elide shortens s to about max bytes by cutting out its middle.
func elide(s string, max int) string {
	if len(s) <= max {
		return s
	}
	head, tail := max*2/3, max/3
	return fmt.Sprintf("%s ...(%d bytes)... %s", strings.ToValidUTF8(s[:head], ""), len(s)-head-tail, strings.ToValidUTF8(s[len(s)-tail:], ""))
}

// UnmountAll detaches every mount at or under target, deepest first. It is
// not an error if nothing is mounted there, or target does not exist.
func UnmountAll(target string) error {
	if err := mount.UnmountRecursive(target, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}
