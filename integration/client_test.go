//go:build linux

package integration

import (
	"context"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
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
