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
	schedCoreEnv = "SCHED_CORE"
	// containerdMaxProcsEnv carries the GOMAXPROCS `start` had from
	// containerd ("" for none) to the daemon, which runs with its own.
	containerdMaxProcsEnv = "KEEL_CONTAINERD_GOMAXPROCS"
	maxOOMScoreAdj        = 1000
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

// daemonMaxProcs is the daemon's GOMAXPROCS. containerd starts every shim
// with GOMAXPROCS=2 (its runc shim then runs its daemon with 4), but a
// shim's work is waiting: for syscalls, which hand their P to another
// thread anyway, and for containerd. Every P costs an idle shim memory for
// good: its own partly used heap span of each size class, its stack cache,
// and a thread. One P makes an idle shim's anonymous memory a sixth
// smaller (BenchmarkFootprint).
const daemonMaxProcs = "1"

// daemonEnv is the environment `start` gives the daemon: its own, with the
// daemon's GOMAXPROCS in place of containerd's, which the daemon puts back
// for the processes it starts (tuneDaemon). It goes in the environment,
// rather than through runtime.GOMAXPROCS in the daemon, so that the
// runtime starts with one P: a P taken away later hands its cached spans
// to per-size-class runtime lists that are allocated on first use, which
// costs more than the P saved.
func daemonEnv(environ []string) []string {
	env := make([]string, 0, len(environ)+2)
	var containerd string
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GOMAXPROCS="); ok {
			containerd = v
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GOMAXPROCS="+daemonMaxProcs, containerdMaxProcsEnv+"="+containerd)
}

// tuneDaemon puts containerd's GOMAXPROCS back in the environment and
// applies the OOM score and the core-scheduling cookie. Neither of those is
// worth failing for: where the kernel refuses, it is logged.
func tuneDaemon(log *slog.Logger) {
	if v, ok := os.LookupEnv(containerdMaxProcsEnv); ok {
		// The runtime and the loggers get containerd's environment.
		os.Unsetenv(containerdMaxProcsEnv)
		if v == "" {
			os.Unsetenv("GOMAXPROCS")
		} else {
			os.Setenv("GOMAXPROCS", v)
		}
	}
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
