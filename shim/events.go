//go:build linux

package shim

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Event topics, as containerd names them.
const (
	TopicCreate      = "/tasks/create"
	TopicStart       = "/tasks/start"
	TopicExit        = "/tasks/exit"
	TopicDelete      = "/tasks/delete"
	TopicExecAdded   = "/tasks/exec-added"
	TopicExecStarted = "/tasks/exec-started"
	TopicPaused      = "/tasks/paused"
	TopicResumed     = "/tasks/resumed"
	TopicOOM         = "/tasks/oom"
	TopicCheckpoint  = "/tasks/checkpointed"
)

const (
	forwardTimeout = 5 * time.Second
	maxBackoff     = time.Second
	// settleDelay is how long events that waited for containerd wait
	// more once it answers again: clients that subscribe to its events
	// (ctr events, Docker, chaos tests) reconnect after a restart, and
	// an event sent in the first instant would reach none of them.
	settleDelay = 2 * time.Second
)

// maxQueued bounds the events waiting for containerd. Past it, new events
// are dropped and counted, except exits, which are never dropped: a
// workload that floods events (an OOM loop) while containerd is away must
// not grow the shim, or the spool in its bundle, without bound.
const maxQueued = 1024

// Publisher sends task events to containerd in the order they were
// published, through one queue and one forwarder. Publish never blocks; an
// event that cannot be delivered is retried, in order, until Close, and
// meanwhile kept on disk in its container's bundle (spool.go). Delivery is
// at least once: a Forward that timed out after containerd took it is sent
// again.
type Publisher struct {
	address string // containerd's ttrpc socket
	ns      string
	log     *slog.Logger
	settle  time.Duration // settleDelay, but in tests

	mu         sync.Mutex
	queue      []*pending      // guarded by mu
	closing    bool            // guarded by mu
	pendingOOM map[string]bool // guarded by mu; bundles with an OOM queued
	dropped    int             // guarded by mu; dropped since last logged
	published  uint64          // guarded by mu; events queued, ever
	settled    uint64          // guarded by mu; of those, delivered or dropped
	progress   chan struct{}   // guarded by mu; closed when settled grows
	wake       chan struct{}   // a slot: the forwarder has work
	idle       chan struct{}   // closed when the forwarder has stopped

	// Owned by the forwarder.
	client      *ttrpc.Client
	failing     bool   // the last send failed
	unreachable bool   // since then, containerd's socket refused a dial
	spoolSeq    uint64 // numbers spool files in publishing order
}

// pending is a queued event and where it is spooled, if it is.
type pending struct {
	env    *types.Envelope
	bundle string // the container's bundle; "" for none

	// Owned by the forwarder.
	spoolTried bool
	file       string // the spool file, once written
}

// NewPublisher starts forwarding to containerd's ttrpc address.
func NewPublisher(address, ns string, log *slog.Logger) *Publisher {
	return newPublisher(address, ns, log, settleDelay)
}

func newPublisher(address, ns string, log *slog.Logger, settle time.Duration) *Publisher {
	p := &Publisher{
		address:    strings.TrimPrefix(address, "unix://"),
		ns:         ns,
		log:        log,
		settle:     settle,
		pendingOOM: make(map[string]bool),
		progress:   make(chan struct{}),
		wake:       make(chan struct{}, 1),
		idle:       make(chan struct{}),
	}
	go p.forward()
	return p
}

// Publish queues an event about the container whose bundle is given. It is
// safe to call under any lock. It returns the event's place in the
// publishing order (the first is 1), for SyncTo, or 0 if it was not queued.
func (p *Publisher) Publish(bundle, topic string, event proto.Message) uint64 {
	if p.address == "" {
		return 0 // no containerd to tell (a shim started by hand)
	}
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		p.log.Error("marshal event", "topic", topic, "error", err)
		return 0
	}
	env := &types.Envelope{Timestamp: timestamppb.Now(), Namespace: p.ns, Topic: topic, Event: a}
	p.mu.Lock()
	switch {
	case p.closing:
		p.mu.Unlock()
		p.log.Warn("event after shutdown dropped", "topic", topic)
		return 0
	case topic == TopicOOM && p.pendingOOM[bundle]:
		// One queued OOM says all there is to say until it is delivered.
		p.mu.Unlock()
		return 0
	case len(p.queue) >= maxQueued && topic != TopicExit:
		if p.dropped++; p.dropped == 1 {
			p.log.Warn("event queue full while containerd is away; dropping events other than exits", "limit", maxQueued)
		}
		p.mu.Unlock()
		return 0
	}
	if topic == TopicOOM {
		p.pendingOOM[bundle] = true
	}
	p.queue = append(p.queue, &pending{env: env, bundle: bundle})
	p.published++
	seq := p.published
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return seq
}

// Sync waits until every event published before the call has been
// delivered (or dropped), or ctx ends.
func (p *Publisher) Sync(ctx context.Context) error {
	p.mu.Lock()
	target := p.published
	p.mu.Unlock()
	return p.SyncTo(ctx, target)
}

// SyncTo waits until the first n events published (see Publish) have been
// delivered (or dropped), or ctx ends. Wait uses it: a client that learns
// of an exit from Wait must already have had the events before the exit,
// such as the OOM that the CRI turns into the reason "OOMKilled".
func (p *Publisher) SyncTo(ctx context.Context, n uint64) error {
	p.mu.Lock()
	for p.settled < n {
		progress := p.progress
		p.mu.Unlock()
		select {
		case <-progress:
		case <-ctx.Done():
			return ctx.Err()
		}
		p.mu.Lock()
	}
	p.mu.Unlock()
	return nil
}

// settleLocked counts n events as delivered or dropped and wakes Sync.
func (p *Publisher) settleLocked(n int) {
	if n == 0 {
		return
	}
	p.settled += uint64(n)
	close(p.progress)
	p.progress = make(chan struct{})
}

// removeHeadLocked takes the delivered head off the queue.
func (p *Publisher) removeHeadLocked(head *pending) {
	if len(p.queue) == 0 || p.queue[0] != head {
		return
	}
	p.queue[0] = nil
	p.queue = p.queue[1:]
	if head.env.Topic == TopicOOM {
		delete(p.pendingOOM, head.bundle)
	}
	p.settleLocked(1)
}

// Close delivers what is queued, waiting at most timeout, then stops.
func (p *Publisher) Close(timeout time.Duration) {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	select {
	case <-p.idle:
	case <-time.After(timeout):
		p.mu.Lock()
		lost := len(p.queue)
		p.queue = nil
		p.settleLocked(lost)
		p.mu.Unlock()
		p.log.Error("events undelivered at shutdown, left in their bundles", "count", lost, "dir", spoolDirName)
	}
}

func (p *Publisher) forward() {
	defer close(p.idle)
	backoff := 10 * time.Millisecond
	for {
		p.mu.Lock()
		var head *pending
		if len(p.queue) > 0 {
			head = p.queue[0]
		}
		closing := p.closing
		p.mu.Unlock()
		if head == nil {
			if closing {
				p.closeClient()
				return
			}
			<-p.wake
			continue
		}
		if err := p.send(head.env); err != nil {
			if !p.failing {
				p.log.Warn("forward event; retrying, spooled in the bundle", "topic", head.env.Topic, "error", err)
			}
			p.failing = true
			p.closeClient()
			p.spoolQueued()
			time.Sleep(backoff)
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		backoff = 10 * time.Millisecond
		p.mu.Lock()
		p.removeHeadLocked(head)
		dropped := p.dropped
		p.dropped = 0
		p.mu.Unlock()
		unspool(head)
		if dropped > 0 {
			p.log.Warn("events dropped while the queue was full", "count", dropped)
		}
	}
}

// send forwards env to containerd, connecting first if need be. A
// connection made after containerd was unreachable waits settleDelay
// before the first send, for subscribers that reconnect after it. One
// that merely replaces a stale connection (containerd restarted while the
// shim had nothing to send) does not: containerd has been back for a while,
// and what it must know (an OOM, then an exit that Wait holds back for it)
// goes at once.
func (p *Publisher) send(env *types.Envelope) error {
	if p.client == nil {
		conn, err := net.DialTimeout("unix", p.address, forwardTimeout)
		if err != nil {
			p.unreachable = true
			return err
		}
		p.client = ttrpc.NewClient(conn)
		if p.unreachable {
			time.Sleep(p.settle)
		}
		p.failing, p.unreachable = false, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
	defer cancel()
	return forward(ctx, p.client, p.ns, env)
}

// forward sends one envelope to containerd's event service, in namespace ns.
func forward(ctx context.Context, client *ttrpc.Client, ns string, env *types.Envelope) error {
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{"containerd-namespace-ttrpc": []string{ns}})
	_, err := eventsapi.NewTTRPCEventsClient(client).Forward(ctx, &eventsapi.ForwardRequest{Envelope: env})
	return err
}

func (p *Publisher) closeClient() {
	if p.client != nil {
		p.client.Close()
		p.client = nil
	}
}
