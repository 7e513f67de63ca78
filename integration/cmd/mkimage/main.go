// Command mkimage writes the busybox test image used by the integration
// tests, so scripts/demo.sh imports exactly what the tests import.
package main

import (
	"flag"
	"log"

	"github.com/keel-shim/keel/integration/imagebuild"
)

func main() {
	out := flag.String("o", "", "write an OCI image archive (for ctr images import) to this file")
	rootfs := flag.String("rootfs", "", "also lay the image out as a plain rootfs in this directory")
	busybox := flag.String("busybox", imagebuild.DefaultBusybox, "static busybox binary to put in the image")
	ref := flag.String("ref", imagebuild.Ref, "image name recorded in the archive")
	flag.Parse()
	if *out == "" && *rootfs == "" {
		log.Fatal("mkimage: give -o FILE and/or -rootfs DIR")
	}
	if *out != "" {
		if err := imagebuild.WriteOCIArchiveFile(*out, *busybox, *ref); err != nil {
			log.Fatal(err)
		}
	}
	if *rootfs != "" {
		if err := imagebuild.WriteRootfs(*rootfs, *busybox); err != nil {
			log.Fatal(err)
		}
	}
}
