//go:build linux

package integration

import (
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

// BenchmarkPodShimMemory: the memory a node pays per pod for its shim: the
// PSS of the one shim serving a pod of three containers (the sandbox and
// two more; the CRI groups them), Keel against containerd's runc shim of
// the same containerd, in one daemon, alternating which goes first.
//
//	go test -run '^$' -bench PodShimMemory -benchtime 1x ./integration/
func BenchmarkPodShimMemory(b *testing.B) {
	for _, version := range benchVersions() {
		b.Run(version, func(b *testing.B) {
			d := StartContainerd(b, version)
			c := d.StartCRI(b)
			handlers := []struct{ handler, runtime, shim string }{
				{criHandler, defaultRuntime, "containerd-shim-keel-v2"},
				{"runc", "io.containerd.runc.v2", "containerd-shim-runc-v2"},
			}
			pss := map[string][]float64{}
			for round := 0; round < benchRounds(b); round++ {
				for i := range handlers {
					h := handlers[(i+round)%len(handlers)]
					pod := c.RunPodOn(b, fmt.Sprintf("mem-%s-%d", h.handler, round), h.handler, h.runtime)
					for _, name := range []string{"app", "sidecar"} {
						c.RunContainer(b, pod, ContainerSpec{Name: name, Command: []string{"sleep", "3600"}})
					}
					time.Sleep(2 * time.Second) // settle: start-up garbage collected
					shims := d.shimsNamed(h.shim)
					if len(shims) != 1 {
						b.Fatalf("%d %s processes for one pod, want 1", len(shims), h.shim)
					}
					m, err := procKB(fmt.Sprintf("/proc/%d/smaps_rollup", shims[0]), "Pss", "Pss_Anon", "Rss")
					if err != nil {
						b.Fatal(err)
					}
					b.Logf("round %d %s: shim %d Pss %.0f kB Pss_Anon %.0f kB Rss %.0f kB", round, h.handler, shims[0], m["Pss"], m["Pss_Anon"], m["Rss"])
					pss[h.handler] = append(pss[h.handler], m["Pss"])
					c.RemovePod(b, pod)
				}
			}
			keel, ref := median(pss[criHandler]), median(pss["runc"])
			b.ReportMetric(keel, "keel-pod-shim-PSS-kB")
			b.ReportMetric(ref, "runc-pod-shim-PSS-kB")
			b.ReportMetric(keel/ref, "keel/runc")
		})
	}
}

// shimsNamed lists the live shims of d's CRI namespace with that binary name.
func (d *Daemon) shimsNamed(name string) []int {
	var pids []int
	for _, pid := range allPids() {
		args := cmdline(pid)
		if len(args) == 0 || filepath.Base(args[0]) != name || exited(pid) {
			continue
		}
		var ns, addr bool
		for i := 0; i+1 < len(args); i++ {
			ns = ns || (args[i] == "-namespace" && args[i+1] == criNamespace)
			addr = addr || (args[i] == "-address" && args[i+1] == d.Address)
		}
		if ns && addr {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}
