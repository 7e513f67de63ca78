//go:build linux

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallDepsLeavesContainerdAlone: on a machine that already runs a
// containerd and a runc (Docker's containerd.io, say), the install script
// plans no containerd or runc package, says it leaves them alone, and in
// --dry-run changes nothing.
func TestInstallDepsLeavesContainerdAlone(t *testing.T) {
	bin := t.TempDir()
	for name, out := range map[string]string{
		"containerd": "containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da",
		"runc":       "runc version 1.2.5",
	} {
		script := "#!/bin/sh\necho '" + out + "'\n"
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prefix := filepath.Join(t.TempDir(), "keel")
	cmd := exec.Command("bash", "../scripts/install-deps.sh", "--dry-run")
	cmd.Env = append(environWithout("PATH", "KEEL_CONTAINERD_PREFIX", "KEEL_DEPS_CONTAINERD"),
		"PATH="+bin+":"+os.Getenv("PATH"), "KEEL_CONTAINERD_PREFIX="+prefix)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("install-deps.sh --dry-run: %v\n%s", err, out)
	}
	t.Logf("install-deps.sh --dry-run:\n%s", out)
	text := string(out)
	for _, want := range []string{
		"leaving the machine's containerd alone: " + filepath.Join(bin, "containerd") + " (containerd containerd.io 1.7.27",
		"using the runc already here: " + filepath.Join(bin, "runc"),
		"(not installing it)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the plan does not say %q", want)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, "apt-get install") && (strings.Contains(line, " containerd") || strings.Contains(line, " runc")) {
			t.Errorf("the plan installs a containerd or runc package over the machine's: %q", line)
		}
	}
	if _, err := os.Stat(prefix); !os.IsNotExist(err) {
		t.Errorf("--dry-run created %s: %v", prefix, err)
	}
}

// TestVersionNamesCommit: `make build` makes a shim whose -v names the git
// commit it was built from, and the Go version.
func TestVersionNamesCommit(t *testing.T) {
	head, err := exec.Command("git", "-C", "..", "rev-parse", "HEAD").Output()
	if err != nil {
		skipOrFail(t, "not a git checkout: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "containerd-shim-keel-v2")
	if out, err := exec.Command("make", "-C", "..", "build", "BIN="+bin).CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		t.Fatalf("-v: %v\n%s", err, out)
	}
	text := string(out)
	if !strings.Contains(text, "Revision: "+strings.TrimSpace(string(head))) || !strings.Contains(text, "Go version: go1.") {
		t.Errorf("-v says\n%s\nwant Revision: %s (maybe with .m) and the Go version", text, strings.TrimSpace(string(head)))
	}
}
