//go:build linux

package process

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/keel-shim/keel/process/reaper"
)

// exitFile holds the init's exit in the bundle, for the shim's `delete`:
// containerd runs it after a shim died, and without this record it could
// only guess that the container was killed.
const exitFile = "keel-exit.json"

// SaveExit records the init's exit in the bundle.
func SaveExit(bundle string, e reaper.Exit) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	tmp := filepath.Join(bundle, "."+exitFile)
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(bundle, exitFile))
}

// LoadExit reads the exit SaveExit recorded, if any.
func LoadExit(bundle string) (reaper.Exit, bool) {
	var e reaper.Exit
	data, err := os.ReadFile(filepath.Join(bundle, exitFile))
	if err != nil || json.Unmarshal(data, &e) != nil || e.Pid <= 0 {
		return reaper.Exit{}, false
	}
	return e, true
}
