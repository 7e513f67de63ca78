//go:build linux

package integration

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sys/unix"
)

// noStallLines is what the workload writes: numbered lines of about 1 KiB,
// some 40 a second, so that 30 s of output (over 1 MiB) is many times what
// the pipe and the FIFO hold (64 KiB each) and fits the buffer.
const (
	noStallLines  = 2000
	noStallBuffer = 4 << 20
)

// TestNoStallThroughRestart: with Keel's OutputBufferSize set, a container
// that writes steadily to its FIFO stdout keeps running while its reader is
// gone (the client detached, containerd down for 30 s), and the reader
// that attaches afterwards gets every line, in order. The negative control,
// on 2.4: without the buffer the same workload stalls (as it does with
// containerd's shim), so the test can tell the two apart.
func TestNoStallThroughRestart(t *testing.T) {
	if os.Getenv("KEEL_TEST_RUNTIME") != "" {
		t.Skip("OutputBufferSize is Keel's own option")
	}
	forEachVersion(t, func(t *testing.T, d *Daemon) {
		if d.Version == "1.7" || d.Version == "2.2" {
			// The buffer is Keel's own; containerd only matters for how it
			// starts the shim and passes stdio, the same in 1.7 and 2.2 as
			// in 1.6.
			t.Skip("1.6 and 2.4 cover both bootstraps; 30 s of downtime is not worth more runs")
		}
		t.Run("buffered", func(t *testing.T) {
			if stall := noStall(t, d, true, 30*time.Second); stall != "" {
				t.Fatal(stall)
			}
		})
		if d.Version == "2.4" {
			t.Run("unbuffered stalls", func(t *testing.T) {
				if stall := noStall(t, d, false, 10*time.Second); stall == "" {
					t.Fatal("without OutputBufferSize the workload never stalled: the test cannot see a stall")
				} else {
					t.Logf("as expected without the buffer: %s", stall)
				}
			})
		}
	})
}

// noStall runs the workload, lets its reader go and containerd stay away
// for down, and returns the first stall seen meanwhile ("" for none). With
// the buffer it then checks that a new reader gets every line in order.
func noStall(t *testing.T, d *Daemon, buffered bool, down time.Duration) string {
	var opts any
	if buffered {
		cfg := filepath.Join(d.Dir, "keel-options.toml")
		body := fmt.Sprintf("OutputBufferSize = %d\nOutputBufferPolicy = \"block\"\n", noStallBuffer)
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		opts = &runtimeoptions.Options{ConfigPath: cfg}
	}
	c, ctx := d.Client(t)
	id := d.NewID("nostall")
	script := fmt.Sprintf(`pad=$(head -c 1000 /dev/zero | tr '\0' x)
i=0
while [ $i -lt %d ]; do i=$((i+1)); echo "$i $pad"; echo $i > /progress; usleep 20000; done`, noStallLines)
	cont := newClientContainer(t, d, c, ctx, id, opts, 0, oci.WithProcessArgs("sh", "-c", script))
	// The test reads the FIFO itself, as the CRI plugin does: it can
	// go away and come back to the same FIFO (containerd's client
	// removes its FIFOs when it closes them).
	stdout := filepath.Join(t.TempDir(), "stdout")
	if err := unix.Mkfifo(stdout, 0o600); err != nil {
		t.Fatal(err)
	}
	var before syncBuffer
	firstRead := readFIFO(t, stdout, &before)
	task, err := cont.NewTask(ctx, func(string) (cio.IO, error) { return fifoIO{cio.Config{Stdout: stdout}}, nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	progress := filepath.Join("/proc", strconv.Itoa(int(task.Pid())), "root", "progress")
	if !pollUntil(10*time.Second, func() bool { return strings.Contains(before.String(), "\n50 ") }) {
		t.Fatalf("no output from the workload: %q", before.String())
	}

	// The reader goes away, then containerd; meanwhile the workload's
	// progress is sampled.
	firstRead.Close()
	stop := make(chan struct{})
	stalls := make(chan string, 1)
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		stalls <- watchProgress(progress, stop)
	}()
	d.Restart(t, true, down)
	close(stop)
	sampler.Wait()
	if stall := <-stalls; stall != "" || !buffered {
		return stall
	}

	cont, err = c.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var after syncBuffer
	readFIFO(t, stdout, &after)
	if task, err = cont.Task(ctx, nil); err != nil {
		t.Fatal(err)
	}
	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-exitC:
		if st.ExitCode() != 0 {
			t.Fatalf("workload exited %d", st.ExitCode())
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the workload did not finish")
	}
	pollUntil(30*time.Second, func() bool { return strings.Contains(after.String(), fmt.Sprintf("\n%d ", noStallLines)) })
	checkLines(t, before.String()+after.String(), noStallLines)
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	return ""
}

// fifoIO hands containerd FIFO paths that the test reads itself.
type fifoIO struct{ cfg cio.Config }

func (f fifoIO) Config() cio.Config { return f.cfg }
func (fifoIO) Cancel()              {}
func (fifoIO) Wait()                {}
func (fifoIO) Close() error         { return nil }

// readFIFO copies what arrives on path into buf until the returned file
// is closed. It opens the FIFO read-write, so that the open does not wait
// for the shim and reads do not end before the shim has opened it.
func readFIFO(t *testing.T, path string, buf *syncBuffer) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(buf, f)
	t.Cleanup(func() { f.Close() })
	return f
}

// watchProgress samples the counter the workload writes until stop; it
// returns a description of the first stall (no progress for 3 s while the
// workload had lines left), or "".
func watchProgress(path string, stop <-chan struct{}) string {
	last, lastChange := -1, time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return ""
		case <-tick.C:
		}
		data, err := os.ReadFile(path)
		n, perr := strconv.Atoi(strings.TrimSpace(string(data)))
		switch {
		case err != nil:
			return fmt.Sprintf("reading the workload's progress: %v", err)
		case perr != nil:
			continue // read while being rewritten
		case n != last:
			last, lastChange = n, time.Now()
		case n < noStallLines && time.Since(lastChange) > 3*time.Second:
			return fmt.Sprintf("the workload stalled at line %d for %s while nobody read its output", n, time.Since(lastChange).Round(time.Second))
		}
	}
}

// checkLines checks that out is lines 1..n, each once, in order.
func checkLines(t *testing.T, out string, n int) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != n {
		t.Fatalf("got %d lines, want %d", len(lines), n)
	}
	for i, line := range lines {
		num, pad, _ := strings.Cut(line, " ")
		if num != strconv.Itoa(i+1) || len(pad) != 1000 || bytes.Count([]byte(pad), []byte("x")) != 1000 {
			t.Fatalf("line %d is %.40q..., want %d and 1000 x", i+1, line, i+1)
		}
	}
}
