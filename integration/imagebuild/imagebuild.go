// Package imagebuild writes a tiny busybox OCI image (and the same tree as a
// plain rootfs directory) without any registry: the test machines have none,
// but they have Debian's busybox-static.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Ref is the name the image is imported under.
const Ref = "docker.io/library/busybox:keel"

// PauseRef names the pod sandbox ("pause") image of the CRI tests: the same
// busybox tree whose entrypoint sleeps for good. The CRI configuration names
// it as the sandbox image, and it is imported under exactly this name, so
// that the CRI never tries to pull it.
const PauseRef = "registry.k8s.io/pause:keel"

// Config is what an image runs by default.
type Config struct {
	Entrypoint []string
	Cmd        []string
}

// Busybox is the default Config: a shell.
var Busybox = Config{Cmd: []string{"sh"}}

// Pause is the Config of the pause image: sleep for 68 years. busybox's
// sleep, as pid 1 of the sandbox, needs no signal handling: the CRI stops a
// sandbox with SIGKILL.
var Pause = Config{Entrypoint: []string{"/bin/sleep", "2147483647"}}

// DefaultBusybox is where Debian's busybox-static puts the binary.
const DefaultBusybox = "/usr/bin/busybox"

// Applets get a /bin symlink to busybox; the tests and the demo only use these.
var Applets = []string{
	"sh", "echo", "cat", "sleep", "ls", "ps", "top", "true", "false", "env",
	"id", "pwd", "kill", "touch", "mkdir", "rm", "wc", "head", "grep",
	"hostname", "test", "uname", "date", "readlink", "stat", "dd",
}

var dirs = []string{"bin", "dev", "etc", "proc", "root", "sys", "tmp"}

// Fixed mtime so the image (and its digest) is the same on every build.
var epoch = time.Unix(0, 0).UTC()

var etcFiles = map[string]string{
	"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
	"etc/group":  "root:x:0:\n",
}

// WriteRootfs lays the image's files out in dir, for `ctr run --rootfs`.
func WriteRootfs(dir, busybox string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), data, 0o755); err != nil {
		return err
	}
	for _, a := range Applets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	for name, content := range etcFiles {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// layer returns the uncompressed layer tar with the same tree as WriteRootfs.
func layer(busybox string) ([]byte, error) {
	data, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(h *tar.Header) error {
		h.ModTime, h.Format = epoch, tar.FormatPAX
		return tw.WriteHeader(h)
	}
	for _, d := range dirs {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := hdr(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode}); err != nil {
			return nil, err
		}
	}
	if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(data))}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	for _, a := range Applets {
		if err := hdr(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{"etc/group", "etc/passwd"} {
		c := etcFiles[name]
		if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(c))}); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, c); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// WriteOCIArchive writes an OCI image layout tarball, as `ctr images import`
// reads it, holding one image named ref for the host's architecture.
func WriteOCIArchive(w io.Writer, busybox, ref string) error {
	return WriteOCIArchiveWith(w, busybox, ref, Busybox)
}

// WriteOCIArchiveWith is WriteOCIArchive for an image that runs cfg.
func WriteOCIArchiveWith(w io.Writer, busybox, ref string, cfg Config) error {
	layerTar, err := layer(busybox)
	if err != nil {
		return err
	}
	return writeLayeredArchive(w, ref, cfg, [][]byte{layerTar})
}

// WriteOCIArchiveFile is WriteOCIArchive to a new file at path.
func WriteOCIArchiveFile(path, busybox, ref string) error {
	return WriteOCIArchiveFileWith(path, busybox, ref, Busybox)
}

// WriteOCIArchiveFileWith is WriteOCIArchiveWith to a new file at path.
func WriteOCIArchiveFileWith(path, busybox, ref string, cfg Config) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := WriteOCIArchiveWith(f, busybox, ref, cfg); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
