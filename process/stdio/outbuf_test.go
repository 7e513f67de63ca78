//go:build linux

package stdio

import (
	"bytes"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// startBuffered copies a new pipe into another through a queue of limit
// bytes; it returns the producer's end, the consumer's end, the copy's
// result and the number of bytes reported dropped.
func startBuffered(t *testing.T, b OutputBuffer) (w, r *os.File, done chan error, dropped *atomic.Int64) {
	t.Helper()
	srcR, srcW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	dstR, dstW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	q := newOutputQueue(b)
	done = make(chan error, 1)
	dropped = new(atomic.Int64)
	go func() {
		err := bufferedCopy(dstW, srcR, q, func(n int64) { dropped.Add(n) })
		dstW.Close()
		done <- err
	}()
	t.Cleanup(func() { q.Close(); srcR.Close(); srcW.Close(); dstR.Close() })
	return srcW, dstR, done, dropped
}

// writeWithin writes data, failing the test if that takes longer than a
// process that never stalls would.
func writeWithin(t *testing.T, w *os.File, data []byte) {
	t.Helper()
	written := make(chan error, 1)
	go func() { _, err := w.Write(data); written <- err }()
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the producer stalled writing %d bytes", len(data))
	}
}

// TestBufferedCopyHoldsOutputWithoutReader: nobody reads the destination,
// which holds 64 KiB; the process still writes 4 MiB without stalling,
// and the reader that comes later gets all of it, in order.
func TestBufferedCopyHoldsOutputWithoutReader(t *testing.T) {
	data := payload(t)[:4<<20]
	w, r, done, dropped := startBuffered(t, OutputBuffer{Size: 8 << 20})
	writeWithin(t, w, data)
	w.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, want the %d written, in order", len(got), len(data))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if dropped.Load() != 0 {
		t.Fatalf("%d bytes reported dropped under the block policy", dropped.Load())
	}
}

// TestBufferedCopyBlocksPastLimit: under the block policy the process
// waits once the buffer is full, and loses nothing.
func TestBufferedCopyBlocksPastLimit(t *testing.T) {
	const limit = 256 << 10
	data := payload(t)[:4<<20]
	w, r, done, _ := startBuffered(t, OutputBuffer{Size: limit})
	var n atomic.Int64
	go func() {
		for off := 0; off < len(data); off += 4096 {
			if _, err := w.Write(data[off : off+4096]); err != nil {
				return
			}
			n.Add(4096)
		}
		w.Close()
	}()
	time.Sleep(500 * time.Millisecond)
	// The three pipe buffers (64 KiB each, by default) and the queue.
	if held, most := n.Load(), int64(limit+3*64<<10+2*chunkSize); held > most || held < limit {
		t.Fatalf("the producer wrote %d bytes with nobody reading; want between %d and %d", held, limit, most)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes (%v), want the %d written, in order", len(got), err, len(data))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestBufferedCopyDropsOldest: with drop-oldest the process never waits;
// the reader gets the output in order with the dropped ranges left out,
// ending with the newest, and the drop is reported.
func TestBufferedCopyDropsOldest(t *testing.T) {
	const limit = 128 << 10
	data := payload(t)[:4<<20]
	w, r, done, dropped := startBuffered(t, OutputBuffer{Size: limit, DropOldest: true})
	writeWithin(t, w, data)
	// Let the copy take in the last write before the reader appears.
	time.Sleep(200 * time.Millisecond)
	w.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if int64(len(got))+dropped.Load() != int64(len(data)) {
		t.Fatalf("read %d and dropped %d of %d bytes", len(got), dropped.Load(), len(data))
	}
	if !inOrder(got, data) {
		t.Fatal("what was read is not the output in order, less dropped ranges")
	}
	if !bytes.HasSuffix(data, got[len(got)-limit:]) {
		t.Fatal("the last bytes read are not the newest output")
	}
	if dropped.Load() == 0 {
		t.Fatal("nothing reported dropped")
	}
}

// inOrder tells whether got is data with some ranges left out. data is
// random, so a 64-byte run of got is found in data at one place only.
func inOrder(got, data []byte) bool {
	for len(got) > 0 {
		n := min(64, len(got))
		i := bytes.Index(data, got[:n])
		if i < 0 {
			return false
		}
		data = data[i:]
		m := 0
		for m < len(got) && m < len(data) && got[m] == data[m] {
			m++
		}
		got, data = got[m:], data[m:]
	}
	return true
}

// TestBufferedCopyClose: closing the queue (Delete) ends the copy even
// when nobody ever reads.
func TestBufferedCopyClose(t *testing.T) {
	srcR, srcW, _ := os.Pipe()
	dstR, dstW, _ := os.Pipe()
	defer srcW.Close()
	defer dstR.Close()
	q := newOutputQueue(OutputBuffer{Size: 1 << 20})
	done := make(chan error, 1)
	go func() { done <- bufferedCopy(dstW, srcR, q, func(int64) {}) }()
	writeWithin(t, srcW, make([]byte, 512<<10))
	q.Close()
	dstW.Close()
	srcR.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the copy did not end after Close")
	}
}
