package runtime

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
)

// Error is a failed runtime call. Its message is the runtime's own last
// error; errors.Is sees the errdefs kind the message stands for.
type Error struct {
	Op     string // the runtime subcommand: create, start, kill, ...
	Binary string
	Msg    string
	cause  error
}

func (e *Error) Error() string {
	prefix := fmt.Sprintf("%s %s failed: ", filepath.Base(e.Binary), e.Op)
	if strings.HasPrefix(e.Msg, prefix) {
		return e.Msg // runc already says which call failed
	}
	return prefix + e.Msg
}

// Unwrap exposes the errdefs kind and the underlying cause, if any.
func (e *Error) Unwrap() []error {
	errs := []error{}
	if kind := classify(e.Op, e.Msg); kind != nil {
		errs = append(errs, kind)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// classify maps the runtimes' messages, as runc and crun print them, to an
// errdefs kind. Unrecognised messages stay unclassified (Unknown).
func classify(op, msg string) error {
	m := strings.ToLower(msg)
	switch {
	case strings.Contains(m, "/status`: no such file or directory"),
		strings.HasPrefix(m, "cannot open directory") && strings.Contains(m, "no such file or directory"):
		// crun's words for a container it does not know: its state
		// directory or status file is missing.
		return errdefs.ErrNotFound
	case strings.Contains(m, "executable file not found"),
		strings.Contains(m, "no such file or directory") && (op == "create" || op == "exec"):
		// The process to start does not exist: the request cannot work.
		return errdefs.ErrFailedPrecondition
	case strings.Contains(m, "container does not exist"),
		strings.Contains(m, "container not found"):
		return errdefs.ErrNotFound
	case strings.Contains(m, "process already finished"),
		strings.Contains(m, "container not running"),
		strings.Contains(m, "no such process"):
		// Signalling or pausing something that has already exited.
		return errdefs.ErrNotFound
	case strings.Contains(m, "already exists"):
		return errdefs.ErrAlreadyExists
	case strings.Contains(m, "not paused"), strings.Contains(m, "is paused"),
		strings.Contains(m, "not running"):
		return errdefs.ErrFailedPrecondition
	}
	return nil
}

// lastError returns the last error-level message of a runtime JSON log
// (runc and crun both write {"level":"error","msg":"..."} lines with
// --log-format json), or the last non-empty line if none parses.
func lastError(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var last, lastLine string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		lastLine = string(line)
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(line, &entry) == nil && entry.Msg != "" &&
			(entry.Level == "error" || entry.Level == "fatal" || entry.Level == "panic") {
			last = entry.Msg
		}
	}
	if last != "" {
		return last
	}
	return lastLine
}

// trimOutput returns the last non-empty line of a runtime's own output.
func trimOutput(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
