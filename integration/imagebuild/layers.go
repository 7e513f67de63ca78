package imagebuild

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strconv"
)

// LayerFile is where layer n (1-based, after the busybox layer) of a
// layered image puts its one file, whose content is n and a newline.
func LayerFile(n int) string { return "layers/" + strconv.Itoa(n) }

// WriteLayeredOCIArchiveFile writes, like WriteOCIArchiveFile, a busybox
// image named ref, but of 1+extra layers: the busybox tree, then extra tiny
// layers each adding LayerFile(n). It is how a many-layer image, whose
// overlay mount options are longer than a page, is made without a registry.
func WriteLayeredOCIArchiveFile(file, busybox, ref string, extra int) error {
	base, err := layer(busybox)
	if err != nil {
		return err
	}
	layers := [][]byte{base}
	for n := 1; n <= extra; n++ {
		l, err := fileLayer(LayerFile(n), strconv.Itoa(n)+"\n")
		if err != nil {
			return err
		}
		layers = append(layers, l)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := writeLayeredArchive(f, ref, Busybox, layers); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", file, err)
	}
	return f.Close()
}

// fileLayer is an uncompressed layer tar holding one file (and its
// directory, so that each layer stands on its own).
func fileLayer(name, content string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := path.Dir(name) + "/"
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(content)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := io.WriteString(tw, content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeLayeredArchive writes an OCI image layout tarball of one image made
// of layers (bottom first), for `ctr images import`.
func writeLayeredArchive(w io.Writer, ref string, cfg Config, layers [][]byte) error {
	plat := platform{Architecture: runtime.GOARCH, OS: "linux"}
	run := map[string]any{
		"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		"WorkingDir": "/",
	}
	// Only what is set, so the busybox image stays byte for byte the same.
	if cfg.Entrypoint != nil {
		run["Entrypoint"] = cfg.Entrypoint
	}
	if cfg.Cmd != nil {
		run["Cmd"] = cfg.Cmd
	}
	diffIDs := make([]string, 0, len(layers))
	descs := make([]descriptor, 0, len(layers))
	for _, l := range layers {
		diffIDs = append(diffIDs, digest(l))
		descs = append(descs, descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: digest(l), Size: int64(len(l))})
	}
	config, err := json.Marshal(map[string]any{
		"architecture": plat.Architecture,
		"os":           plat.OS,
		"config":       run,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(config), Size: int64(len(config))},
		"layers":        descs,
	})
	if err != nil {
		return err
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json",
			Digest:    digest(manifest),
			Size:      int64(len(manifest)),
			Annotations: map[string]string{
				"io.containerd.image.name":          ref,
				"org.opencontainers.image.ref.name": ref,
			},
			Platform: &plat,
		}},
	})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "blobs/sha256/", Mode: 0o755, ModTime: epoch}); err != nil {
		return err
	}
	seen := map[string]bool{}
	add := func(name string, b []byte) error {
		if seen[name] {
			return nil // identical layers share one blob
		}
		seen[name] = true
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	for _, b := range append(append([][]byte{}, layers...), config, manifest) {
		if err := add("blobs/sha256/"+digest(b)[len("sha256:"):], b); err != nil {
			return err
		}
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := add("index.json", index); err != nil {
		return err
	}
	return tw.Close()
}
