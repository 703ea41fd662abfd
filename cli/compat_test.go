package cli

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// run runs the qchain command line in-process.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Run(append([]string{"qchain"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestCompatSelection(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img.qcow2")
	if code, _, stderr := run(t, "create", img, "1M"); code != 0 {
		t.Fatalf("create: exit %d: %s", code, stderr)
	}
	tests := []struct {
		name, env string
		args      []string
		children  bool // the layout is 10.0's
		exit      int
	}{
		{"default", "", nil, true, 0},
		{"flag-7.2", "", []string{"--compat=7.2"}, false, 0},
		{"flag-10", "", []string{"--compat=10"}, true, 0},
		{"env-7.2", "7.2", nil, false, 0},
		{"env-10.0", "10.0", nil, true, 0},
		{"flag-wins", "7.2", []string{"--compat=10.0"}, true, 0},
		{"flag-wins-72", "10.0", []string{"--compat=7.2"}, false, 0},
		{"bad-flag", "", []string{"--compat=8.2"}, false, 1},
		{"empty-flag", "7.2", []string{"--compat="}, false, 1},
		{"bad-env", "latest", nil, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(compatEnv, tt.env)
			for _, cmd := range []string{"info", "map", "check"} {
				args := append(append([]string{cmd}, tt.args...), "--output=json", img)
				code, stdout, stderr := run(t, args...)
				if code != tt.exit {
					t.Fatalf("%s: exit %d, want %d: %s", args, code, tt.exit, stderr)
				}
				if tt.exit != 0 {
					if stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "7.2 or 10.0") {
						t.Errorf("%s: stdout %q, stderr %q; want one line naming the accepted values, nothing on stdout", args, stdout, stderr)
					}
					continue
				}
				var has bool
				switch cmd {
				case "info":
					has = strings.Contains(stdout, `"children"`)
				case "map":
					has = strings.Contains(stdout, `"compressed"`)
				default:
					has = tt.children // check prints alike in both layouts
				}
				if has != tt.children {
					t.Errorf("%s: 10.0's keys present %t, want %t:\n%s", args, has, tt.children, stdout)
				}
			}
		})
	}
}
