//go:build linux

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The reference the benchmarks compare Keel with is containerd-shim-runc-v2
// as containerd's releases ship it: containerd's Makefile builds its shims
// with CGO_ENABLED=0 (static) and, unless GODEBUG is set, -ldflags '-s -w'
// (stripped). scripts/install-deps.sh builds containerd with a plain
// `go install` (cgo, dynamically linked, with symbols and DWARF), which maps
// libc into every shim and so is not what users run. refShim builds the
// release-style shim of the same containerd module version once and caches
// it under $KEEL_CONTAINERD_PREFIX/bench-ref-<version>/ (or
// $KEEL_BENCH_REF_DIR/bench-ref-<version>/).
//
// containerd 1.6 is Debian's package (/usr/bin): Debian's own
// containerd-shim-runc-v2 is what Debian users run, so it is the reference
// as it is.
//
// KEEL_BENCH_REF=installed uses the install-deps.sh build instead (today's
// numbers before the fair reference, for comparison).

// refShim returns the reference shim binary for containerd `version` and the
// runtime name to give containerd for it: an absolute path, which containerd
// (1.7 and 2.x) takes as the shim binary itself, so the release-style build
// need not be on containerd's PATH.
func refShim(b testing.TB, version string) (binary, runtime string) {
	b.Helper()
	bin, err := binDir(version)
	if err != nil {
		b.Fatal(err)
	}
	installed := filepath.Join(bin, "containerd-shim-runc-v2")
	if version == "1.6" || os.Getenv("KEEL_BENCH_REF") == "installed" {
		return installed, "io.containerd.runc.v2"
	}
	tag := map[string]string{"1.7": pins["KEEL_CONTAINERD_V17"], "2.2": pins["KEEL_CONTAINERD_V22"], "2.4": pins["KEEL_CONTAINERD_V24"]}[version]
	if tag == "" {
		b.Fatalf("no pinned containerd release for %s", version)
	}
	root := pins["KEEL_CONTAINERD_PREFIX"]
	if p := os.Getenv("KEEL_CONTAINERD_PREFIX"); p != "" {
		root = p
	}
	if p := os.Getenv("KEEL_BENCH_REF_DIR"); p != "" {
		root = p
	}
	dir := filepath.Join(root, "bench-ref-"+tag)
	shim := filepath.Join(dir, "containerd-shim-runc-v2")
	if err := checkRefShim(shim, tag); err == nil {
		return shim, shim
	}
	if err := buildRefShim(dir, tag); err != nil {
		b.Fatalf("build the release-style containerd-shim-runc-v2 %s: %v", tag, err)
	}
	if err := checkRefShim(shim, tag); err != nil {
		b.Fatal(err)
	}
	return shim, shim
}

// checkRefShim says whether shim is a static, trimmed build of containerd
// `tag` (`go version -m`; -ldflags is not recorded with -trimpath, so
// strippedness is checked on the ELF file itself).
func checkRefShim(shim, tag string) error {
	out, err := exec.Command("go", "version", "-m", shim).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go version -m %s: %v\n%s", shim, err, out)
	}
	s := string(out)
	mod := "github.com/containerd/containerd/v2\t" + tag
	if strings.HasPrefix(tag, "v1.") {
		// Built as the main module: go stamps no version; VERSION says it.
		mod = "path\tgithub.com/containerd/containerd/cmd/containerd-shim-runc-v2"
		if v, _ := os.ReadFile(filepath.Join(filepath.Dir(shim), "VERSION")); strings.TrimSpace(string(v)) != tag {
			return fmt.Errorf("%s: VERSION is not %s", shim, tag)
		}
	}
	for _, want := range []string{"build\tCGO_ENABLED=0", "build\t-trimpath=true", mod} {
		if !strings.Contains(s, want) {
			return fmt.Errorf("%s is not a release-style build of %s: no %q in go version -m", shim, tag, want)
		}
	}
	if stripped, err := elfStripped(shim); err != nil || !stripped {
		return fmt.Errorf("%s is not stripped (%v)", shim, err)
	}
	return nil
}

// buildRefShim builds containerd-shim-runc-v2 of containerd `tag` as
// containerd's release Makefile does (static, -trimpath, -s -w, the version
// stamped in) into dir, through a temp dir renamed into place.
func buildRefShim(dir, tag string) error {
	tmp := dir + ".tmp." + fmt.Sprint(os.Getpid())
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	env := append(environWithout("GOFLAGS", "CGO_ENABLED", "GOBIN"), "CGO_ENABLED=0", "GOBIN="+tmp)
	var cmd *exec.Cmd
	if strings.HasPrefix(tag, "v1.") {
		// As install-deps.sh: `go install pkg@version` refuses 1.7's go.mod
		// (exclude directives), so build in a writable copy of the module.
		out, err := exec.Command("go", "mod", "download", "-json", "github.com/containerd/containerd@"+tag).Output()
		if err != nil {
			return fmt.Errorf("go mod download: %v", err)
		}
		var src string
		for _, line := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == `"Dir"` {
				src = strings.Trim(strings.TrimSpace(v), `",`)
			}
		}
		if src == "" {
			return fmt.Errorf("go mod download gave no module dir")
		}
		work := filepath.Join(tmp, "src")
		if out, err := exec.Command("cp", "-r", src, work).CombinedOutput(); err != nil {
			return fmt.Errorf("cp: %v\n%s", err, out)
		}
		exec.Command("chmod", "-R", "u+w", work).Run()
		cmd = exec.Command("go", "build", "-mod=mod", "-trimpath",
			"-ldflags", "-s -w -X github.com/containerd/containerd/version.Version="+tag,
			"-o", filepath.Join(tmp, "containerd-shim-runc-v2"), "./cmd/containerd-shim-runc-v2")
		cmd.Dir = work
	} else {
		cmd = exec.Command("go", "install", "-trimpath",
			"-ldflags", "-s -w -X github.com/containerd/containerd/v2/version.Version="+tag,
			"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@"+tag)
	}
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	os.RemoveAll(filepath.Join(tmp, "src"))
	if err := os.WriteFile(filepath.Join(tmp, "VERSION"), []byte(tag+"\n"), 0o644); err != nil {
		return err
	}
	os.RemoveAll(dir)
	return os.Rename(tmp, dir)
}
