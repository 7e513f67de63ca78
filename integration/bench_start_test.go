//go:build linux

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkProcessStart times one start-up of each shim binary: exec of
// `SHIM -v` until it exits, which is the Go runtime's start, every package's
// init and the flag parsing, and nothing of the shim's own work. containerd
// pays it three times per container (`start`, the daemon it launches, and
// `delete`, which containerd runs after every shim and waits for), twice of
// them before a container runs: most of the Overhead rows above the floor.
//
// The floor is a bare Go program built as `make build` builds Keel (static,
// stripped, the same toolchain) that prints one line: the share of the
// start-up that is any Go binary's. Besides the wall time per run, the
// median CPU (utime+stime) and minor page faults of the process, which on a
// VM cost tens of microseconds each and follow what start-up touches.
func BenchmarkProcessStart(b *testing.B) {
	for _, v := range benchVersions() {
		b.Run(v, func(b *testing.B) {
			requireSetup(b)
			ref, _ := refShim(b, v)
			all := []benchRuntime{
				{Name: "floor", Binary: buildGoFloor(b)},
				{Name: "keel", Binary: filepath.Join(shimDir, "containerd-shim-keel-v2")},
				{Name: "runc", Binary: ref},
			}
			alternate(b, all, func(b *testing.B, rt benchRuntime) {
				var ms, cpu, faults []float64
				for b.Loop() {
					cmd := exec.Command(rt.Binary, "-v")
					start := time.Now()
					if out, err := cmd.CombinedOutput(); err != nil {
						b.Fatalf("%s -v: %v\n%s", rt.Binary, err, out)
					}
					ms = append(ms, time.Since(start).Seconds()*1e3)
					cpu = append(cpu, (cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime()).Seconds()*1e3)
					faults = append(faults, float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Minflt))
				}
				b.ReportMetric(median(ms), "median-ms")
				b.ReportMetric(median(cpu), "cpu-ms")
				b.ReportMetric(median(faults), "minflt")
			})
		})
	}
}

// buildGoFloor builds the bare Go program of BenchmarkProcessStart.
func buildGoFloor(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	src := "package main\n\nimport \"os\"\n\nfunc main() { os.Stdout.WriteString(\"floor\\n\") }\n"
	for name, data := range map[string]string{"go.mod": "module floor\n\ngo 1.22\n", "main.go": src} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "floor")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build the Go floor: %v\n%s", err, out)
	}
	return bin
}
