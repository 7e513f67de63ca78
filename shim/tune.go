//go:build linux

package shim

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// What a shim daemon sets up for itself, as containerd's own shims do,
// before it starts any container (containers inherit both).

const (
	// parentOOMScoreEnv carries containerd's oom_score_adj from `start`
	// (containerd's child) to the daemon, which is not containerd's child.
	parentOOMScoreEnv = "KEEL_CONTAINERD_OOM_SCORE_ADJ"
	// schedCoreEnv is set by containerd when its config enables sched_core.
	schedCoreEnv   = "SCHED_CORE"
	maxOOMScoreAdj = 1000
)

// readOOMScoreAdj reads a process's oom_score_adj.
func readOOMScoreAdj(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// shimOOMScoreAdj is one above containerd's: when memory runs out the
// kernel's OOM killer then takes a shim before containerd, never the other
// way round.
func shimOOMScoreAdj(containerd int) int {
	return min(containerd+1, maxOOMScoreAdj)
}

// tuneDaemon applies the OOM score and the core-scheduling cookie. Neither
// is worth failing for: where the kernel refuses, it is logged.
func tuneDaemon(log *slog.Logger) {
	if v := os.Getenv(parentOOMScoreEnv); v != "" {
		os.Unsetenv(parentOOMScoreEnv) // for `start` only, not the runtime

		parent, err := strconv.Atoi(v)
		if err == nil {
			score := strconv.Itoa(shimOOMScoreAdj(parent))
			err = os.WriteFile("/proc/self/oom_score_adj", []byte(score), 0)
		}
		if err != nil {
			log.Warn("set oom_score_adj one above containerd's", "containerd", v, "error", err)
		}
	}
	if os.Getenv(schedCoreEnv) != "" {
		// A cookie of its own for the whole daemon; the processes it starts
		// inherit it, so a container never shares a core with another
		// pod's (containerd's sched_core setting).
		if err := unix.Prctl(unix.PR_SCHED_CORE, unix.PR_SCHED_CORE_CREATE, 0, unix.PR_SCHED_CORE_SCOPE_THREAD_GROUP, 0); err != nil {
			log.Warn("create a core scheduling cookie (SCHED_CORE)", "error", err)
		}
	}
}
