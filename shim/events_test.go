//go:build linux

package shim

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeEvents is containerd's event service, recording what it is sent.
type fakeEvents struct {
	mu     sync.Mutex
	topics []string
	held   map[string]chan struct{} // topics whose Forward waits
	srv    *ttrpc.Server
	path   string
}

// hold makes Forwards of topic wait, unrecorded, until release is called.
func (f *fakeEvents) hold(topic string) (release func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	if f.held == nil {
		f.held = make(map[string]chan struct{})
	}
	f.held[topic] = ch
	f.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// stop is containerd going away: the server and its socket are gone.
func (f *fakeEvents) stop() {
	f.srv.Close()
	os.Remove(f.path)
}

func (f *fakeEvents) Forward(_ context.Context, r *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	ev, err := typeurl.UnmarshalAny(r.GetEnvelope().GetEvent())
	if err != nil {
		return nil, err
	}
	name := r.GetEnvelope().GetTopic()
	if e, ok := ev.(*eventstypes.TaskExit); ok {
		name += ":" + e.ID
	}
	f.mu.Lock()
	held := f.held[r.GetEnvelope().GetTopic()]
	f.mu.Unlock()
	if held != nil {
		<-held
	}
	f.mu.Lock()
	f.topics = append(f.topics, name)
	f.mu.Unlock()
	return &emptypb.Empty{}, nil
}

func (f *fakeEvents) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.topics...)
}

// serveEvents starts a fake containerd event service on path.
func serveEvents(t *testing.T, path string) *fakeEvents {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEvents{srv: srv, path: path}
	eventsapi.RegisterTTRPCEventsService(srv, f)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	return f
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestPublisherSpoolsWhileAway: events published while containerd is away
// wait in the bundle, one file each, and are delivered in order, once, when
// it is back; then the spool is gone.
func TestPublisherSpoolsWhileAway(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock.ttrpc")
	bundle := filepath.Join(dir, "c1")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	p := NewPublisher(sock, "ns", discardLog())
	p.Publish(bundle, TopicStart, &eventstypes.TaskStart{ContainerID: "c1", Pid: 1})
	p.Publish(bundle, TopicExit, &eventstypes.TaskExit{ContainerID: "c1", ID: "e1"})
	p.Publish(bundle, TopicExit, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1"})
	waitUntil(t, "three spooled events", 5*time.Second, func() bool { return len(spooled(bundle)) == 3 })

	f := serveEvents(t, sock)
	want := []string{TopicStart, TopicExit + ":e1", TopicExit + ":c1"}
	waitUntil(t, "delivery", 10*time.Second, func() bool { return len(f.seen()) >= len(want) })
	p.Close(5 * time.Second)
	if got := f.seen(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	if _, err := os.Stat(filepath.Join(bundle, spoolDirName)); !os.IsNotExist(err) {
		t.Fatalf("spool left after delivery: %v", err)
	}
}

// TestPublisherNoBundleNoSpool: an event without a bundle is never written
// anywhere, and a bundle that is gone is not made again.
func TestPublisherNoBundleNoSpool(t *testing.T) {
	dir := t.TempDir()
	gone := filepath.Join(dir, "gone")
	p := NewPublisher(filepath.Join(dir, "nobody.sock"), "ns", discardLog())
	p.Publish("", TopicDelete, &eventstypes.TaskDelete{ContainerID: "c1"})
	p.Publish(gone, TopicExit, &eventstypes.TaskExit{ContainerID: "c1"})
	time.Sleep(300 * time.Millisecond)
	p.Close(100 * time.Millisecond)
	if _, err := os.Stat(gone); !os.IsNotExist(err) {
		t.Fatalf("a removed bundle was made again: %v", err)
	}
}

// TestReplaySpool: what a dead shim left is forwarded by `delete`, except
// the init's exit and delete, which containerd publishes itself; without
// containerd the error names what is lost.
func TestReplaySpool(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "c1")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func() {
		for i, ev := range []struct {
			topic string
			event any
		}{
			{TopicExit, &eventstypes.TaskExit{ContainerID: "c1", ID: "e1", ExitStatus: 5}},
			{TopicOOM, &eventstypes.TaskOOM{ContainerID: "c1"}},
			{TopicExit, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1", ExitStatus: 7}},
			{TopicDelete, &eventstypes.TaskDelete{ContainerID: "c1"}},
		} {
			a, err := typeurl.MarshalAnyToProto(ev.event)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := spool(bundle, &types.Envelope{Timestamp: timestamppb.Now(), Namespace: "ns", Topic: ev.topic, Event: a}, uint64(i)); err != nil {
				t.Fatal(err)
			}
		}
	}

	write()
	err := replaySpool(filepath.Join(dir, "nobody.sock"), "ns", bundle, "c1", 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "2 events") || !strings.Contains(err.Error(), TopicOOM) {
		t.Fatalf("replay without containerd: %v; want the exec exit and the OOM named as lost", err)
	}
	if _, err := os.Stat(filepath.Join(bundle, spoolDirName)); !os.IsNotExist(err) {
		t.Fatalf("spool left after replay: %v", err)
	}

	write()
	sock := filepath.Join(dir, "containerd.sock.ttrpc")
	f := serveEvents(t, sock)
	if err := replaySpool("unix://"+sock, "ns", bundle, "c1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(f.seen(), " "), TopicExit+":e1 "+TopicOOM; got != want {
		t.Fatalf("replayed %q, want %q", got, want)
	}
}

// TestPublisherSync: Sync returns once what was published before it is
// delivered, and not before.
func TestPublisherSync(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock.ttrpc")
	p := NewPublisher(sock, "ns", discardLog())
	defer p.Close(time.Second)
	p.Publish("", TopicOOM, &eventstypes.TaskOOM{ContainerID: "c1"})
	p.Publish("", TopicExit, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1"})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	if err := p.Sync(ctx); err == nil {
		t.Fatal("Sync returned while containerd was away")
	}
	cancel()
	f := serveEvents(t, sock)
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.seen(), " "); got != TopicOOM+" "+TopicExit+":c1" {
		t.Fatalf("after Sync containerd has %q, want the OOM and the exit", got)
	}
}

// TestPublisherSyncTo: SyncTo waits for the events up to a place in the
// publishing order, not for those after it.
func TestPublisherSyncTo(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock.ttrpc")
	f := serveEvents(t, sock)
	release := f.hold(TopicExit)
	defer release()
	p := NewPublisher(sock, "ns", discardLog())
	defer p.Close(time.Second)
	oom := p.Publish("", TopicOOM, &eventstypes.TaskOOM{ContainerID: "c1"})
	exit := p.Publish("", TopicExit, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1"})
	if oom == 0 || exit != oom+1 {
		t.Fatalf("Publish returned %d, %d: want consecutive places", oom, exit)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.SyncTo(ctx, exit-1); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.seen(), " "); got != TopicOOM {
		t.Fatalf("after SyncTo containerd has %q, want the OOM", got)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelShort()
	if err := p.SyncTo(short, exit); err == nil {
		t.Fatal("SyncTo returned while the exit was held back")
	}
	release()
	if err := p.SyncTo(ctx, exit); err != nil {
		t.Fatal(err)
	}
}

// TestPublisherBounded: while containerd is away, OOMs of a container
// coalesce into one, the queue stops growing at its limit (and so does the
// spool), and exits are never dropped.
func TestPublisherBounded(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock.ttrpc")
	bundle := filepath.Join(dir, "c1")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	p := NewPublisher(sock, "ns", discardLog())
	for i := 0; i < 500; i++ {
		p.Publish(bundle, TopicOOM, &eventstypes.TaskOOM{ContainerID: "c1"})
	}
	for i := 0; i < 2*maxQueued; i++ {
		p.Publish(bundle, TopicExecAdded, &eventstypes.TaskExecAdded{ContainerID: "c1", ExecID: "e"})
	}
	p.Publish(bundle, TopicExit, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1"})
	waitUntil(t, "the spool", 10*time.Second, func() bool { return len(spooled(bundle)) >= maxQueued })
	time.Sleep(200 * time.Millisecond)
	if n := len(spooled(bundle)); n != maxQueued+1 {
		t.Errorf("%d spooled events, want %d (the limit, plus the exit)", n, maxQueued+1)
	}

	f := serveEvents(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	p.Close(time.Second)
	counts := map[string]int{}
	for _, topic := range f.seen() {
		counts[topic]++
	}
	if counts[TopicOOM] != 1 || counts[TopicExit+":c1"] != 1 || counts[TopicExecAdded] != maxQueued-1 {
		t.Errorf("delivered %v; want 1 OOM, 1 exit and %d exec-added", counts, maxQueued-1)
	}
}

// TestPublisherSettlesOnlyAfterAnOutage: after containerd was unreachable
// the first send waits the settle delay (for subscribers coming back); a
// connection that was merely stale (containerd restarted while the shim
// had nothing to send) is replaced and used at once, so that what the CRI
// needs at an exit is not held back.
func TestPublisherSettlesOnlyAfterAnOutage(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock.ttrpc")
	first := serveEvents(t, sock)
	p := newPublisher(sock, "ns", discardLog(), time.Hour)
	defer p.Close(time.Second)
	sync := func(within time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		return p.Sync(ctx)
	}
	p.Publish("", TopicStart, &eventstypes.TaskStart{ContainerID: "c1"})
	if err := sync(10 * time.Second); err != nil || len(first.seen()) != 1 {
		t.Fatalf("first delivery: %v, seen %v", err, first.seen())
	}

	// containerd restarts while the shim is idle: its connection is stale.
	first.stop()
	second := serveEvents(t, sock)
	p.Publish("", TopicOOM, &eventstypes.TaskOOM{ContainerID: "c1"})
	p.Publish("", TopicExit, &eventstypes.TaskExit{ContainerID: "c1", ID: "c1"})
	if err := sync(10 * time.Second); err != nil {
		t.Fatalf("events after a restart were held back: %v (seen %v)", err, second.seen())
	}

	// containerd is away when the shim sends: once back, the shim settles.
	second.stop()
	p.Publish("", TopicExit, &eventstypes.TaskExit{ContainerID: "c1", ID: "e1"})
	time.Sleep(200 * time.Millisecond) // the send fails: nobody listens
	serveEvents(t, sock)
	if err := sync(2 * time.Second); err == nil {
		t.Fatal("after an outage the event went out without the settle delay")
	}
}
