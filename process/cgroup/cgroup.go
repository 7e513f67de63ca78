//go:build linux

// Package cgroup reads a container's cgroup: its metrics, in the types
// containerd expects for cgroup v1 and v2 (github.com/containerd/cgroups/v3
// stats), and its OOM events. It reads the cgroup files itself rather than
// through the cgroups managers, which would bring D-Bus and eBPF code into
// every shim for what are a few file reads.
package cgroup

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// DefaultRoot is where the cgroup hierarchies are mounted.
const DefaultRoot = "/sys/fs/cgroup"

// Cgroup is one container's cgroup, v1 (a path per controller) or v2.
type Cgroup struct {
	root    string
	unified string            // v2: the cgroup's directory; "" for v1
	v1      map[string]string // v1: controller -> the cgroup's directory
}

// ForPid finds the cgroup of pid (the container's init) under root. On a
// host in unified mode (root has cgroup.controllers) it is the v2 cgroup;
// otherwise, hybrid hosts included, the v1 controllers.
func ForPid(root string, pid int) (*Cgroup, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	return parse(root, data)
}

// parse reads /proc/PID/cgroup content: "ID:controllers:path" lines.
func parse(root string, procCgroup []byte) (*Cgroup, error) {
	cg := &Cgroup{root: root}
	_, statErr := os.Stat(filepath.Join(root, "cgroup.controllers"))
	unifiedMode := statErr == nil
	// Not a bufio.Scanner: its 4 KiB buffer would be garbage for a few
	// hundred bytes.
	for line := range strings.Lines(string(procCgroup)) {
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls, path := parts[1], parts[2]
		if !filepath.IsAbs(path) || strings.Contains(path, "..") {
			continue
		}
		if ctrls == "" {
			if unifiedMode {
				cg.unified = filepath.Join(root, path)
			}
			continue
		}
		if unifiedMode {
			continue
		}
		for _, c := range strings.Split(ctrls, ",") {
			if strings.HasPrefix(c, "name=") {
				continue
			}
			if cg.v1 == nil {
				cg.v1 = make(map[string]string)
			}
			cg.v1[c] = filepath.Join(root, c, path)
		}
	}
	if cg.unified == "" && len(cg.v1) == 0 {
		return nil, fmt.Errorf("no cgroup found in %q: %w", procCgroup, errdefs.ErrNotFound)
	}
	return cg, nil
}

// IsV2 tells whether this is a unified (v2) cgroup.
func (c *Cgroup) IsV2() bool { return c.unified != "" }

// file is the path of a controller's file: v1 picks the controller's
// hierarchy, v2 has one directory.
func (c *Cgroup) file(controller, name string) string {
	if c.unified != "" {
		return filepath.Join(c.unified, name)
	}
	return filepath.Join(c.v1[controller], name)
}

// readUint reads a file holding one number. "max" (no limit: v2 limits,
// and v1 pids.max) reads as math.MaxUint64, as cgroups/v3's cgroup2 reports
// it: the CRI computes available memory as limit - usage, and 0 would also
// be taken for a real limit of 0 (pids.max can be 0).
func readUint(path string) (uint64, error) {
	var buf [64]byte
	data, err := readFile(path, buf[:])
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return math.MaxUint64, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// readFile reads a cgroup file into buf, or into a larger buffer if buf
// cannot hold it. os.ReadFile would size its buffer by the file's size,
// which cgroupfs gives as 4096 for every file: a Stats call, which reads a
// few dozen files of a few bytes each, then left ~150 kB of garbage in the
// shim, every time the CRI collects metrics.
func readFile(path string, buf []byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err == io.EOF {
			return buf[:n], nil
		}
		if err != nil {
			return nil, err
		}
	}
	rest, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	return append(buf[:n:n], rest...), nil
}

// optUint is readUint for files a kernel or configuration may lack.
func optUint(path string) uint64 {
	v, _ := readUint(path)
	return v
}

// readKeyed calls f for each "key value" line of a flat keyed file.
func readKeyed(path string, f func(key string, value uint64)) error {
	var buf [2048]byte
	data, err := readFile(path, buf[:])
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			f(k, n)
		}
	}
	return nil
}

// Exists tells whether the cgroup is still there (a removed memory cgroup
// also fires the v1 OOM eventfd).
func (c *Cgroup) Exists() bool {
	dir := c.unified
	if dir == "" {
		dir = c.v1["memory"]
	}
	_, err := os.Stat(dir)
	return !errors.Is(err, os.ErrNotExist)
}

// AddProcess moves pid into the cgroup at path (relative to each
// hierarchy), for the ShimCgroup option.
func AddProcess(root, path string, pid int) error {
	if !filepath.IsAbs(path) || strings.Contains(path, "..") {
		return fmt.Errorf("cgroup path %q: must be absolute and clean: %w", path, errdefs.ErrInvalidArgument)
	}
	pidStr := []byte(strconv.Itoa(pid))
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		dir := filepath.Join(root, path)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "cgroup.procs"), pidStr, 0)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	moved := 0
	for _, e := range entries {
		hier := filepath.Join(root, e.Name())
		if _, err := os.Stat(filepath.Join(hier, "cgroup.procs")); err != nil || e.Name() == "unified" {
			continue // not a v1 hierarchy (or the hybrid v2 mount)
		}
		if e.Type()&os.ModeSymlink != 0 {
			continue // cpu -> cpu,cpuacct: the real directory is visited too
		}
		dir := filepath.Join(hier, path)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := inheritCpuset(hier, path); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pidStr, 0); err != nil {
			return fmt.Errorf("join %s: %w", dir, err)
		}
		moved++
	}
	if moved == 0 {
		return fmt.Errorf("no cgroup hierarchy under %s: %w", root, errdefs.ErrNotFound)
	}
	return nil
}

// inheritCpuset fills the empty cpuset.cpus and cpuset.mems of new v1
// cpuset cgroups from their parents, top down, as runc does: a process
// cannot join a cpuset cgroup that has no CPUs or memory nodes (ENOSPC).
func inheritCpuset(hier, path string) error {
	if _, err := os.Stat(filepath.Join(hier, "cpuset.cpus")); err != nil {
		return nil // not the cpuset hierarchy
	}
	parent := hier
	for _, part := range strings.Split(strings.Trim(path, "/"), "/") {
		dir := filepath.Join(parent, part)
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			cur, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return err
			}
			if len(strings.TrimSpace(string(cur))) > 0 {
				continue
			}
			val, err := os.ReadFile(filepath.Join(parent, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, f), val, 0); err != nil {
				return fmt.Errorf("inherit %s in %s: %w", f, dir, err)
			}
		}
		parent = dir
	}
	return nil
}
