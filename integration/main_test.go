//go:build linux

// Package integration runs Keel end to end: real containerd daemons (Debian's
// 1.6 and the pinned 1.7 and 2.x builds), real runc, and ctr, the Go client
// and the CRI (as the kubelet uses it) as clients. Set
// KEEL_TEST_RUNTIME=io.containerd.runc.v2 to run the same tests against the
// reference shim, which is how the tests themselves are validated.
package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keel-shim/keel/integration/imagebuild"
)

const defaultRuntime = "io.containerd.keel.v2"

var (
	// setupErr says why the tests cannot run here (not root, no busybox).
	// Outside CI that skips them; in CI it fails them.
	setupErr error
	// buildErr is a failed shim build: always a failure.
	buildErr error
	// shimDir is put first in containerd's PATH; it holds the Keel shim.
	shimDir string
	// imageTar is the busybox OCI archive every daemon imports.
	imageTar string
	// pauseTar is the CRI tests' sandbox image (imagebuild.PauseRef).
	pauseTar string
	// pins holds scripts/containerd-versions.env.
	pins map[string]string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "keel-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	setup(tmp)
	code := m.Run()
	if raceDir != "" && racesReported() && code == 0 {
		code = 1
	}
	return code
}

// raceDir, with KEEL_SHIM_RACE=1, collects the data race reports of shims
// built with -race: each shim writes its own (GORACE log_path, inherited
// through containerd's environment).
var raceDir string

// racesReported prints the shims' race reports, if any, and says whether
// there were some.
func racesReported() bool {
	reports, _ := filepath.Glob(filepath.Join(raceDir, "race.*"))
	for _, r := range reports {
		data, _ := os.ReadFile(r)
		fmt.Fprintf(os.Stderr, "DATA RACE in a shim (%s):\n%s\n", r, data)
	}
	return len(reports) > 0
}

func setup(tmp string) {
	if pins, setupErr = readPins("../scripts/containerd-versions.env"); setupErr != nil {
		return
	}
	if os.Geteuid() != 0 {
		setupErr = fmt.Errorf("integration tests need root (containerd, runc, mounts)")
		return
	}
	if _, err := os.Stat(imagebuild.DefaultBusybox); err != nil {
		setupErr = fmt.Errorf("busybox-static is not installed: %v (run scripts/install-deps.sh)", err)
		return
	}
	imageTar = filepath.Join(tmp, "busybox-oci.tar")
	if setupErr = imagebuild.WriteOCIArchiveFile(imageTar, imagebuild.DefaultBusybox, imagebuild.Ref); setupErr != nil {
		return
	}
	pauseTar = filepath.Join(tmp, "pause-oci.tar")
	if setupErr = imagebuild.WriteOCIArchiveFileWith(pauseTar, imagebuild.DefaultBusybox, imagebuild.PauseRef, imagebuild.Pause); setupErr != nil {
		return
	}
	shimDir, buildErr = buildShim(filepath.Join(tmp, "bin"))
}

// buildShim builds the Keel shim once for all tests, or takes the one named
// by KEEL_SHIM_BINARY. It returns the directory to put first in PATH.
func buildShim(binDir string) (string, error) {
	const name = "containerd-shim-keel-v2"
	if p := os.Getenv("KEEL_SHIM_BINARY"); p != "" {
		p, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		if filepath.Base(p) != name {
			// containerd finds the shim by name in PATH, so link it under that name.
			if err := os.MkdirAll(binDir, 0o755); err != nil {
				return "", err
			}
			return binDir, os.Symlink(p, filepath.Join(binDir, name))
		}
		return filepath.Dir(p), nil
	}
	if runtimeName() != defaultRuntime {
		// Validating against another shim: Keel need not even build.
		return "", nil
	}
	// As `make build` builds it: static, so no libc is mapped into every shim.
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(binDir, name), "./cmd/"+name)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if os.Getenv("KEEL_SHIM_RACE") == "1" {
		// The race detector needs cgo. Reports go to files the tests
		// read at the end: a shim's stderr is containerd's log.
		raceDir = filepath.Join(filepath.Dir(binDir), "race")
		if err := os.MkdirAll(raceDir, 0o755); err != nil {
			return "", err
		}
		os.Setenv("GORACE", "log_path="+filepath.Join(raceDir, "race"))
		cmd = exec.Command("go", "build", "-race", "-trimpath", "-o", filepath.Join(binDir, name), "./cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	}
	cmd.Dir = ".." // the module root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/%s: %v\n%s", name, err, out)
	}
	return binDir, nil
}

// runtimeName is the runtime every test asks ctr for.
func runtimeName() string {
	if r := os.Getenv("KEEL_TEST_RUNTIME"); r != "" {
		return r
	}
	return defaultRuntime
}

// shimBinaryName is the executable containerd derives from a runtime name:
// io.containerd.keel.v2 -> containerd-shim-keel-v2.
func shimBinaryName() string {
	r := strings.TrimPrefix(runtimeName(), "io.containerd.")
	return "containerd-shim-" + strings.ReplaceAll(r, ".", "-")
}

func inCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// skipOrFail skips outside CI; in CI a missing prerequisite is a failure, so
// that a broken CI machine cannot turn the suite green by skipping it.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if inCI() {
		t.Fatalf("CI=true, so this is a failure: "+format, args...)
	}
	t.Skipf(format, args...)
}

func requireSetup(t testing.TB) {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	if setupErr != nil {
		skipOrFail(t, "%v", setupErr)
	}
}

func readPins(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			m[k] = v
		}
	}
	return m, sc.Err()
}
