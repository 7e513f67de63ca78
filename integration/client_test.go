//go:build linux

package integration

import (
	"context"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
)

// Client connects a containerd Go client to d, for what ctr cannot do
// (CloseIO, Update, runtime options such as IoUid) and for benchmarks that
// read a container's output themselves. It is closed when t ends.
func (d *Daemon) Client(t testing.TB) (*containerd.Client, context.Context) {
	t.Helper()
	c, err := containerd.New(d.Address, containerd.WithDefaultNamespace(d.Namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatalf("containerd client for %s: %v", d.Version, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, namespaces.WithNamespace(context.Background(), d.Namespace)
}

// newClientContainer creates a busybox container with the Go client, with
// a snapshot of its own; runtimeOpts go to WithRuntime (nil for none). With
// remapID > 0 the snapshot's files belong to that host uid and gid, the
// root of a user namespace. The container, its task and snapshot are
// removed when t ends.
func newClientContainer(t *testing.T, d *Daemon, c *containerd.Client, ctx context.Context, id string, runtimeOpts any, remapID uint32, specOpts ...oci.SpecOpts) containerd.Container {
	t.Helper()
	img, err := c.GetImage(ctx, imageRef)
	if err != nil {
		t.Fatal(err)
	}
	snapshot := containerd.WithNewSnapshot(id+"-snap", img)
	if remapID > 0 {
		snapshot = containerd.WithRemappedSnapshot(id+"-snap", img, remapID, remapID)
	}
	cont, err := c.NewContainer(ctx, id,
		containerd.WithImage(img),
		snapshot,
		containerd.WithRuntime(d.Runtime, runtimeOpts),
		containerd.WithNewSpec(append(append([]oci.SpecOpts{oci.WithImageConfig(img)}, specOpts...), d.clientSpecOpts()...)...))
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
