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

// TestLayeredArchive checks a many-layer archive as containerd's import
// reads it: a manifest of 1+extra layers in order, each blob matching its
// descriptor, the config's diff_ids matching the layers, and layer n
// holding LayerFile(n).
func TestLayeredArchive(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "busybox")
	if err := os.WriteFile(fake, []byte("not really busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	const extra = 5
	archive := filepath.Join(dir, "layers.tar")
	if err := WriteLayeredOCIArchiveFile(archive, fake, "example.com/layers:test", extra); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := readArchive(t, f)
	type desc struct {
		Digest string
		Size   int
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
	var manifest struct {
		Config desc
		Layers []desc
	}
	if err := json.Unmarshal(blob(index.Manifests[0]), &manifest); err != nil || len(manifest.Layers) != 1+extra {
		t.Fatalf("manifest: %v, %d layers, want %d", err, len(manifest.Layers), 1+extra)
	}
	var config struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	for i, l := range manifest.Layers {
		if i >= len(config.RootFS.DiffIDs) || config.RootFS.DiffIDs[i] != l.Digest {
			t.Fatalf("diff_ids %v do not match layer %d (%s)", config.RootFS.DiffIDs, i, l.Digest)
		}
		if i == 0 {
			continue
		}
		lr := tar.NewReader(bytes.NewReader(blob(l)))
		found := false
		for {
			h, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Name == LayerFile(i) {
				b, _ := io.ReadAll(lr)
				found = string(b) == string(rune('0'+i))+"\n"
			}
		}
		if !found {
			t.Fatalf("layer %d does not hold %s with its number", i, LayerFile(i))
		}
	}
}
