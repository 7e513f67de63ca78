//go:build linux

package shim

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
)

// While containerd cannot be reached, every queued event is also written to
// its container's bundle, one file per event, and removed once delivered.
// The shim retries without a budget (containerd's shim gives up after about
// 21 s and the event is lost); the files are what is left to see, and to
// deliver, if the shim itself dies before containerd comes back: `delete`
// forwards them, or names them in containerd's log.

// spoolDirName is the directory in a bundle that holds undelivered events.
const spoolDirName = "keel-events"

// spoolQueued writes each queued event not yet on disk to its bundle.
func (p *Publisher) spoolQueued() {
	p.mu.Lock()
	queued := append([]*pending(nil), p.queue...)
	p.mu.Unlock()
	for _, e := range queued {
		if e.spoolTried || e.bundle == "" {
			continue
		}
		e.spoolTried = true
		p.spoolSeq++
		file, err := spool(e.bundle, e.env, p.spoolSeq)
		if err != nil {
			p.log.Warn("spool event", "topic", e.env.Topic, "error", err)
			continue
		}
		e.file = file
	}
}

// spool writes env into bundle's spool directory, named by seq, so that
// the files sort in the queue's order (one shim serves a bundle). It does
// not create the bundle: one containerd removed (after Delete) gets nothing.
func spool(bundle string, env *types.Envelope, seq uint64) (string, error) {
	dir := filepath.Join(bundle, spoolDirName)
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return "", err
	}
	data, err := proto.Marshal(env)
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("%020d%s.pb", seq, strings.ReplaceAll(env.GetTopic(), "/", "_"))
	file := filepath.Join(dir, name)
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return "", err
	}
	return file, os.Rename(tmp, file)
}

// unspool removes a delivered event's file, and the directory with the
// last one.
func unspool(e *pending) {
	if e.file == "" {
		return
	}
	os.Remove(e.file)
	os.Remove(filepath.Dir(e.file)) // fails while others remain
}

// replaySpool is for `delete`, run by containerd after a shim died: it
// forwards the events the dead shim left in bundle, except the init's exit
// and delete, which containerd publishes itself after the cleanup, and
// names in the returned error what it could not deliver within timeout
// (containerd runs the cleanups of a restart before it serves events).
func replaySpool(address, ns, bundle, id string, timeout time.Duration) error {
	envs := spooled(bundle)
	defer os.RemoveAll(filepath.Join(bundle, spoolDirName))
	if len(envs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var client *ttrpc.Client
	if conn, err := (&net.Dialer{}).DialContext(ctx, "unix", strings.TrimPrefix(address, "unix://")); err == nil {
		client = ttrpc.NewClient(conn)
		defer client.Close()
	}
	var lost []string
	for _, env := range envs {
		if ownedByContainerd(env, id) {
			continue
		}
		if client != nil && forward(ctx, client, ns, env) == nil {
			continue
		}
		lost = append(lost, env.GetTopic())
	}
	if len(lost) > 0 {
		return fmt.Errorf("%d events of the dead shim could not be delivered: %s", len(lost), strings.Join(lost, " "))
	}
	return nil
}

// ownedByContainerd tells the init's exit and delete of container id,
// which containerd publishes itself when it cleans up after a dead shim.
func ownedByContainerd(env *types.Envelope, id string) bool {
	ev, err := typeurl.UnmarshalAny(env.GetEvent())
	if err != nil {
		return false
	}
	switch e := ev.(type) {
	case *eventstypes.TaskExit:
		return e.GetContainerID() == id && (e.GetID() == id || e.GetID() == "")
	case *eventstypes.TaskDelete:
		return e.GetContainerID() == id && e.GetID() == ""
	}
	return false
}

// spooled returns the events left in bundle's spool, oldest first.
func spooled(bundle string) []*types.Envelope {
	dir := filepath.Join(bundle, spoolDirName)
	names, _ := filepath.Glob(filepath.Join(dir, "*.pb"))
	sort.Strings(names)
	var out []*types.Envelope
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		env := &types.Envelope{}
		if proto.Unmarshal(data, env) == nil {
			out = append(out, env)
		}
	}
	return out
}
