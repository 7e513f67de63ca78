//go:build linux

package process

import (
	"encoding/json"
	"testing"

	"github.com/containerd/errdefs"
)

func TestSpecWithTerminal(t *testing.T) {
	for _, tt := range []struct {
		spec     string
		terminal bool
		want     bool
	}{
		{`{"args":["sh"],"terminal":false}`, true, true}, // cio.WithTerminal
		{`{"args":["sh"]}`, true, true},
		{`{"args":["sh"],"terminal":true}`, false, false},
		{`{"args":["sh"],"terminal":false}`, false, false},
	} {
		out, err := specWithTerminal([]byte(tt.spec), tt.terminal)
		if err != nil {
			t.Fatalf("%s: %v", tt.spec, err)
		}
		var got struct {
			Args     []string `json:"args"`
			Terminal bool     `json:"terminal"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		if got.Terminal != tt.want || len(got.Args) != 1 || got.Args[0] != "sh" {
			t.Errorf("%s with terminal=%v gave %s", tt.spec, tt.terminal, out)
		}
	}
	for _, bad := range []string{`[]`, `null`, `{"terminal":"yes"}`, `not json`} {
		if _, err := specWithTerminal([]byte(bad), true); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: err = %v, want InvalidArgument", bad, err)
		}
	}
}
