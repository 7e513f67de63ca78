//go:build linux

package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keel-shim/keel/integration/imagebuild"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRI is a kubelet's view of one Daemon: the CRI runtime and image
// services over gRPC on containerd's socket.
type CRI struct {
	d    *Daemon
	conn *grpc.ClientConn
	RT   runtimeapi.RuntimeServiceClient
	Img  runtimeapi.ImageServiceClient
}

// criCallTimeout bounds every CRI call the tests make.
const criCallTimeout = 30 * time.Second

// StartCRI imports the busybox and pause images into the CRI's namespace,
// as a node's image preloading does, connects to the CRI and waits until it
// reports the runtime ready and knows both images. Pods left when t ends
// are stopped and removed, as the kubelet would.
func (d *Daemon) StartCRI(t testing.TB) *CRI {
	t.Helper()
	for _, tar := range []string{imageTar, pauseTar} {
		out, err := d.ctrQuietNS(2*time.Minute, criNamespace, "images", "import", tar)
		if err != nil {
			t.Fatalf("import %s into %s: %v\n%s", tar, criNamespace, err, out)
		}
	}
	c := d.connectCRI(t)
	t.Cleanup(func() {
		c.removeAllPods(t)
		c.conn.Close()
	})
	for _, ref := range []string{imagebuild.Ref, imagebuild.PauseRef} {
		var st *runtimeapi.ImageStatusResponse
		ok := pollUntil(10*time.Second, func() bool {
			var err error
			st, err = do(c.Img.ImageStatus, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
			return err == nil && st.Image != nil
		})
		if !ok {
			t.Fatalf("the CRI of containerd %s does not know image %s after its import: %v", d.Version, ref, st)
		}
	}
	return c
}

// connectCRI opens a new connection (one per containerd process: a
// restart leaves the old one in backoff) and waits for the CRI's status.
// The caller closes it.
func (d *Daemon) connectCRI(t testing.TB) *CRI {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+d.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c := &CRI{d: d, conn: conn, RT: runtimeapi.NewRuntimeServiceClient(conn), Img: runtimeapi.NewImageServiceClient(conn)}
	var last string
	ready := pollUntil(30*time.Second, func() bool {
		st, err := do(c.RT.Status, &runtimeapi.StatusRequest{})
		if err != nil {
			last = err.Error()
			return false
		}
		last = st.String()
		for _, cond := range st.GetStatus().GetConditions() {
			if cond.Type == runtimeapi.RuntimeReady {
				return cond.Status
			}
		}
		return false
	})
	if !ready {
		conn.Close()
		t.Fatalf("the CRI of containerd %s is not RuntimeReady after 30s: %s", d.Version, last)
	}
	return c
}

// Reconnect is connectCRI after containerd restarted.
func (c *CRI) Reconnect(t testing.TB) {
	t.Helper()
	n := c.d.connectCRI(t)
	c.conn.Close()
	c.conn, c.RT, c.Img = n.conn, n.RT, n.Img
}

// do makes one CRI call, e.g. do(c.RT.Status, &runtimeapi.StatusRequest{}),
// bounded by criCallTimeout.
func do[Req, Resp any](call func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := context.WithTimeout(context.Background(), criCallTimeout)
	defer cancel()
	return call(ctx, req)
}

// RemovePod stops and removes a pod, as the kubelet does once its
// containers are stopped.
func (c *CRI) RemovePod(t testing.TB, p *Pod) {
	t.Helper()
	if _, err := do(c.RT.StopPodSandbox, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.ID}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := do(c.RT.RemovePodSandbox, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.ID}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
}

// removeAllPods stops and removes every pod, as the kubelet does when pods
// are deleted, if containerd still runs.
func (c *CRI) removeAllPods(t testing.TB) {
	select {
	case <-c.d.exited:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pods, err := c.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Logf("cleanup: list pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		t.Logf("cleanup: leftover pod %s (%s)", p.Id, p.Metadata.GetName())
		if _, err := c.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			t.Logf("cleanup: stop pod %s: %v", p.Id, err)
		}
		if _, err := c.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			t.Logf("cleanup: remove pod %s: %v", p.Id, err)
		}
	}
}

// podNamespaces are the kubelet's for a hostNetwork pod that does not
// share its process namespace: the host's network (and so UTS), the pod's
// IPC, a pid namespace per container. The kubelet passes the same to the
// pod and to each of its containers.
var podNamespaces = &runtimeapi.NamespaceOption{
	Network: runtimeapi.NamespaceMode_NODE,
	Ipc:     runtimeapi.NamespaceMode_POD,
	Pid:     runtimeapi.NamespaceMode_CONTAINER,
}

// Pod is a pod sandbox the tests started.
type Pod struct {
	ID           string
	Config       *runtimeapi.PodSandboxConfig
	CgroupParent string // cgroupfs path, e.g. /keeltest-0123abcd
	LogDir       string
}

// RunPod starts a pod as the kubelet does for a host-network pod of
// RuntimeClass criHandler: its log directory made first, a cgroupfs parent
// of its own, no hostname (the pod shares the host's UTS namespace with its
// network namespace). No CNI is involved.
func (c *CRI) RunPod(t testing.TB, name string) *Pod {
	t.Helper()
	return c.RunPodOn(t, name, criHandler, c.d.Runtime)
}

// RunPodOn is RunPod with another runtime handler, whose runtime type is
// runtimeType (runc's "runc" handler, for comparisons).
func (c *CRI) RunPodOn(t testing.TB, name, handler, runtimeType string) *Pod {
	t.Helper()
	b := make([]byte, 8)
	rand.Read(b)
	uid := hex.EncodeToString(b)
	p := &Pod{CgroupParent: "/keeltest-" + uid}
	p.LogDir = filepath.Join(c.d.Dir, "pods", "keeltest_"+name+"_"+uid)
	if err := os.MkdirAll(p.LogDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p.Config = &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: uid, Namespace: "keeltest"},
		LogDirectory: p.LogDir,
		Labels:       map[string]string{"io.kubernetes.pod.name": name, "io.kubernetes.pod.uid": uid},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: p.CgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: podNamespaces,
			},
		},
	}
	c.d.criCgroups = append(c.d.criCgroups, p.CgroupParent)
	start := time.Now()
	resp, err := do(c.RT.RunPodSandbox, &runtimeapi.RunPodSandboxRequest{Config: p.Config, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("RunPodSandbox %s (handler %s -> %s) on containerd %s: %v", name, handler, runtimeType, c.d.Version, err)
	}
	p.ID = resp.PodSandboxId
	c.d.criIDs = append(c.d.criIDs, p.ID)
	st, err := do(c.RT.PodSandboxStatus, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.ID, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY || st.Status.RuntimeHandler != handler {
		t.Fatalf("pod %s: state %v, handler %q; want SANDBOX_READY, %q", p.ID, st.Status.State, st.Status.RuntimeHandler, handler)
	}
	rt := verboseField(st.Info, "runtimeType")
	if rt != nil && rt != runtimeType {
		t.Fatalf("pod %s runs on runtime type %v, want %s", p.ID, rt, runtimeType)
	}
	t.Logf("pod %s (%s) ready in %v, runtime type %v", name, p.ID, time.Since(start).Round(time.Millisecond), rt)
	return p
}

// ContainerSpec is what the tests vary in a container of a pod.
type ContainerSpec struct {
	Name      string
	Command   []string
	Resources *runtimeapi.LinuxContainerResources
}

// CreateContainer creates (not starts) a busybox container in pod, with its
// log at <pod log dir>/<name>/0.log as the kubelet names it.
func (c *CRI) CreateContainer(t testing.TB, p *Pod, s ContainerSpec) string {
	t.Helper()
	logDir := filepath.Join(p.LogDir, s.Name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: s.Name},
		Image:    &runtimeapi.ImageSpec{Image: imagebuild.Ref},
		Command:  s.Command,
		LogPath:  filepath.Join(s.Name, "0.log"),
		Labels:   map[string]string{"io.kubernetes.container.name": s.Name},
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources: s.Resources,
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: podNamespaces,
			},
		},
	}
	resp, err := do(c.RT.CreateContainer, &runtimeapi.CreateContainerRequest{PodSandboxId: p.ID, Config: cfg, SandboxConfig: p.Config})
	if err != nil {
		t.Fatalf("CreateContainer %s on containerd %s: %v", s.Name, c.d.Version, err)
	}
	c.d.criIDs = append(c.d.criIDs, resp.ContainerId)
	return resp.ContainerId
}

// StartContainer starts a created container.
func (c *CRI) StartContainer(t testing.TB, id string) {
	t.Helper()
	if _, err := do(c.RT.StartContainer, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s on containerd %s: %v", id, c.d.Version, err)
	}
}

// RunContainer creates and starts a container and waits until it runs.
func (c *CRI) RunContainer(t testing.TB, p *Pod, s ContainerSpec) string {
	t.Helper()
	id := c.CreateContainer(t, p, s)
	c.StartContainer(t, id)
	c.WaitState(t, id, runtimeapi.ContainerState_CONTAINER_RUNNING, 10*time.Second)
	return id
}

// Status is ContainerStatus, verbose (the runtime type and pid are only
// in the verbose info).
func (c *CRI) Status(t testing.TB, id string) *runtimeapi.ContainerStatusResponse {
	t.Helper()
	st, err := do(c.RT.ContainerStatus, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	return st
}

// WaitState polls ContainerStatus until the container is in state.
func (c *CRI) WaitState(t testing.TB, id string, state runtimeapi.ContainerState, timeout time.Duration) *runtimeapi.ContainerStatus {
	t.Helper()
	var last *runtimeapi.ContainerStatus
	if !pollUntil(timeout, func() bool {
		last = c.Status(t, id).Status
		return last.State == state
	}) {
		t.Fatalf("container %s not %v within %v; last status %v", id, state, timeout, last)
	}
	return last
}

// Pid is the pid of a container's (or a pod's) init, from the verbose
// status the CRI of every version gives.
func (c *CRI) Pid(t testing.TB, id string) int {
	t.Helper()
	var info map[string]string
	if st, err := do(c.RT.ContainerStatus, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true}); err == nil {
		info = st.Info
		if rt := verboseField(info, "runtimeType"); rt != c.d.Runtime {
			t.Fatalf("container %s runs on runtime type %v, want %s", id, rt, c.d.Runtime)
		}
	} else if st, err := do(c.RT.PodSandboxStatus, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true}); err == nil {
		info = st.Info
	} else {
		t.Fatalf("no container or pod %s: %v", id, err)
	}
	pid, ok := verboseField(info, "pid").(float64)
	if !ok || pid <= 0 {
		t.Fatalf("no pid in the verbose status of %s: %v", id, info)
	}
	return int(pid)
}

// verboseField is a top-level field of the JSON the CRI puts under "info"
// in a verbose status; nil if there is none.
func verboseField(info map[string]string, key string) any {
	var m map[string]any
	if json.Unmarshal([]byte(info["info"]), &m) != nil {
		return nil
	}
	return m[key]
}

// ExecSync runs cmd in the container as `kubectl exec` without a terminal
// (or a probe) does.
func (c *CRI) ExecSync(t testing.TB, id string, cmd ...string) *runtimeapi.ExecSyncResponse {
	t.Helper()
	resp, err := do(c.RT.ExecSync, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 20})
	if err != nil {
		t.Fatalf("ExecSync %q in %s on containerd %s: %v", cmd, id, c.d.Version, err)
	}
	return resp
}

// Shims lists the live shim processes of this runtime serving the CRI's
// namespace of this daemon.
func (c *CRI) Shims() []int {
	var pids []int
	for _, pid := range allPids() {
		args := cmdline(pid)
		if len(args) == 0 || filepath.Base(args[0]) != shimBinaryName() || exited(pid) {
			continue
		}
		var ns, addr bool
		for i := 0; i+1 < len(args); i++ {
			ns = ns || (args[i] == "-namespace" && args[i+1] == criNamespace)
			addr = addr || (args[i] == "-address" && args[i+1] == c.d.Address)
		}
		if ns && addr {
			pids = append(pids, pid)
		}
	}
	return pids
}

// criLogLine is a line of the CRI's container log format:
// <RFC 3339 timestamp> <stdout|stderr> <F|P> <content>.
var criLogLine = regexp.MustCompile(`^(\S+) (stdout|stderr) (F|P) (.*)$`)

// LogLine is one parsed line of a CRI container log.
type LogLine struct {
	Time    time.Time
	Stream  string
	Partial bool
	Text    string
}

// ReadLog parses a container's log file; any line that is not in the CRI
// format fails the test.
func ReadLog(t testing.TB, path string) []LogLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []LogLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := criLogLine.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("%s: line %d is not in the CRI log format: %q", path, len(lines)+1, sc.Text())
		}
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatalf("%s: line %d: timestamp: %v", path, len(lines)+1, err)
		}
		lines = append(lines, LogLine{Time: ts, Stream: m[2], Partial: m[3] == "P", Text: m[4]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// procIdentity tells a process from a later one that reuses its pid.
type procIdentity struct {
	Pid   int
	Start string // field 22 of /proc/PID/stat, in clock ticks since boot
}

func identify(t testing.TB, pid int) procIdentity {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return procIdentity{Pid: pid, Start: rest[19]}
}

// alive: the same process still exists and is not a zombie.
func (p procIdentity) alive() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
	if err != nil {
		return false
	}
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(rest) > 19 && rest[19] == p.Start && rest[0] != "Z"
}

// mountsUnder lists the mount points below dir in the test's mount namespace.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 {
			if mp := unescapeMount(f[4]); mp == dir || strings.HasPrefix(mp, dir+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}
