//go:build linux

package stdio

import (
	"errors"
	"os"
	"sync"
)

// OutputBuffer is what the shim does with a process's output while nobody
// reads its FIFO (containerd restarting, a CRI logger gone). By default
// (Size 0) it does what containerd's shim does: once the FIFO's own 64 KiB
// are full the copy waits, and so does the process at its next write.
// With a Size, the shim keeps reading the process's output into memory,
// up to Size bytes per stream, and hands it, in order, to the reader that
// comes back. Past Size it either waits as above or, with DropOldest,
// drops the oldest bytes it holds and logs how many.
type OutputBuffer struct {
	Size       int
	DropOldest bool
}

// chunkSize is the unit the buffer grows and shrinks by: the pooled copy
// buffer, so that an idle stream holds none beyond its read buffer.
const chunkSize = 32 << 10

// chunk is a pooled buffer holding buf[off:end] of queued output.
type chunk struct {
	buf      *[]byte
	off, end int
}

// outputQueue is the bounded queue between the goroutine that reads a
// process's output and the one that writes it into the FIFO.
type outputQueue struct {
	limit      int
	dropOldest bool

	mu      sync.Mutex
	cond    sync.Cond // signalled on every change below
	chunks  []chunk   // guarded by mu; oldest first
	size    int       // guarded by mu; bytes in chunks
	dropped int64     // guarded by mu; dropped since last reported
	eof     bool      // guarded by mu; the reader is done
	closed  bool      // guarded by mu; the IO is being torn down
}

func newOutputQueue(b OutputBuffer) *outputQueue {
	q := &outputQueue{limit: b.Size, dropOldest: b.DropOldest}
	q.cond.L = &q.mu
	return q
}

var errQueueClosed = errors.New("output queue closed")

// put queues p. Under the block policy it first waits for room, so that a
// full queue stops reading and the process waits, as without a buffer.
func (q *outputQueue) put(p []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.dropOldest && q.size >= q.limit && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return errQueueClosed
	}
	for len(p) > 0 {
		if n := len(q.chunks); n == 0 || q.chunks[n-1].end == chunkSize {
			q.chunks = append(q.chunks, chunk{buf: bufPool.Get().(*[]byte)})
		}
		c := &q.chunks[len(q.chunks)-1]
		m := copy((*c.buf)[c.end:], p)
		c.end += m
		q.size += m
		p = p[m:]
	}
	if q.dropOldest {
		q.dropOver()
	}
	q.cond.Broadcast()
	return nil
}

// dropOver drops the oldest bytes beyond the limit; mu is held.
func (q *outputQueue) dropOver() {
	for q.size > q.limit {
		c := &q.chunks[0]
		n := min(c.end-c.off, q.size-q.limit)
		c.off += n
		q.size -= n
		q.dropped += int64(n)
		if c.off == c.end {
			bufPool.Put(c.buf)
			q.chunks = q.chunks[1:]
		}
	}
}

// take removes the oldest chunk, waiting for one; ok is false once the
// reader is done and everything was taken, or the queue was closed. It
// also returns how many bytes were dropped since the last take.
func (q *outputQueue) take() (c chunk, dropped int64, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.chunks) == 0 && !q.eof && !q.closed {
		q.cond.Wait()
	}
	dropped, q.dropped = q.dropped, 0
	if len(q.chunks) == 0 || q.closed {
		return chunk{}, dropped, false
	}
	c = q.chunks[0]
	q.chunks[0] = chunk{}
	q.chunks = q.chunks[1:]
	q.size -= c.end - c.off
	q.cond.Broadcast()
	return c, dropped, true
}

// finish tells the writer that no more output comes.
func (q *outputQueue) finish() {
	q.mu.Lock()
	q.eof = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// Close ends both sides at once and returns the buffers to the pool.
func (q *outputQueue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for _, c := range q.chunks {
		bufPool.Put(c.buf)
	}
	q.chunks, q.size = nil, 0
	q.cond.Broadcast()
	return nil
}

// bufferedCopy copies src into dst through q: one goroutine reads src
// whenever the process writes, the calling one writes into dst whenever
// the FIFO has room. onDrop hears how many bytes were dropped before
// writing resumes. It returns once src has ended and everything queued
// is written, or on an error of dst, or when q is closed.
func bufferedCopy(dst, src *os.File, q *outputQueue, onDrop func(int64)) error {
	go func() {
		defer q.finish()
		buf := bufPool.Get().(*[]byte)
		defer bufPool.Put(buf)
		for {
			n, err := src.Read(*buf)
			if n > 0 && q.put((*buf)[:n]) != nil {
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		c, dropped, ok := q.take()
		if dropped > 0 {
			onDrop(dropped)
		}
		if !ok {
			return nil
		}
		_, err := dst.Write((*c.buf)[c.off:c.end])
		bufPool.Put(c.buf)
		if err != nil {
			// dst was closed (Delete): nobody can be given the rest.
			q.Close()
			return err
		}
	}
}
