package imagebuild

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestArchiveIsConsistent checks what containerd's import relies on: every
// descriptor's digest and size match its blob, and the layer holds busybox
// with its applet links. A stand-in file plays busybox: no root needed.
func TestArchiveIsConsistent(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(fake, []byte("not really busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteOCIArchive(&buf, fake, Ref); err != nil {
		t.Fatal(err)
	}
	files := readArchive(t, &buf)
	type desc struct {
		Digest      string
		Size        int
		Annotations map[string]string
	}
	blob := func(d desc) []byte {
		b, ok := files["blobs/sha256/"+d.Digest[len("sha256:"):]]
		sum := sha256.Sum256(b)
		if !ok || len(b) != d.Size || "sha256:"+hex.EncodeToString(sum[:]) != d.Digest {
			t.Fatalf("blob %s missing or wrong size/digest", d.Digest)
		}
		return b
	}
	var index struct{ Manifests []desc }
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != Ref {
		t.Fatalf("image name annotation %q, want %q", got, Ref)
	}
	var manifest struct {
		Config desc
		Layers []desc
	}
	if err := json.Unmarshal(blob(index.Manifests[0]), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var config struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Fatalf("diff_ids %v do not match the uncompressed layer %s", config.RootFS.DiffIDs, manifest.Layers[0].Digest)
	}
	layer := map[string]*tar.Header{}
	lr := tar.NewReader(bytes.NewReader(blob(manifest.Layers[0])))
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		layer[h.Name] = h
	}
	if h := layer["bin/busybox"]; h == nil || h.Size != int64(len("not really busybox")) {
		t.Fatalf("layer lacks bin/busybox: %v", layer)
	}
	if h := layer["bin/sh"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
		t.Fatalf("layer lacks the bin/sh -> busybox link")
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Fatalf("oci-layout: %q", files["oci-layout"])
	}
}

// TestConfigRecorded checks that an image's entrypoint and command land in
// its config, and that the busybox image records no entrypoint.
func TestConfigRecorded(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(fake, []byte("not really busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Busybox, `{"Cmd":["sh"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"}`},
		{Pause, `{"Entrypoint":["/bin/sleep","2147483647"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"}`},
	} {
		var buf bytes.Buffer
		if err := WriteOCIArchiveWith(&buf, fake, PauseRef, tc.cfg); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, b := range readArchive(t, &buf) {
			var c struct {
				Architecture string
				Config       json.RawMessage
			}
			if json.Unmarshal(b, &c) != nil || c.Architecture == "" {
				continue
			}
			found = true
			if string(c.Config) != tc.want {
				t.Errorf("config %s, want %s", c.Config, tc.want)
			}
		}
		if !found {
			t.Fatalf("no image config blob in the archive of %+v", tc.cfg)
		}
	}
}

// readArchive returns the regular files of a tar archive by name.
func readArchive(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			files[h.Name] = b
		}
	}
}
