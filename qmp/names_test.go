package qmp

import (
	"strings"
	"testing"
)

func TestJobIDAndNodeName(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{"short", JobID("commit", "vda"), "qchain-commit-vda"},
		{"node", NodeName("overlay", "vdb"), "qchain-overlay-vdb"},
		{"exactly 31", JobID("stream", "abcdefghijklmnopq"), "qchain-stream-abcdefghijklmnopq"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Fatalf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
}

func TestNamesShortenedAndWellFormed(t *testing.T) {
	inputs := []string{
		"vda",
		"a-very-long-disk-name-that-does-not-fit",
		"a-very-long-disk-name-that-does-not-fit2",
		"/var/lib/libvirt/images/guest.qcow2",
		"disk with spaces",
		"#block123",
		"",
	}
	seen := make(map[string]string)
	for _, in := range inputs {
		for _, id := range []string{JobID("commit", in), NodeName("target", in)} {
			if !WellFormedName(id) {
				t.Errorf("name %q for %q is not well formed", id, in)
			}
			if !strings.HasPrefix(id, "qchain-") {
				t.Errorf("name %q lacks the qchain- prefix", id)
			}
			if prev, ok := seen[id]; ok {
				t.Errorf("name %q made for both %q and %q", id, prev, in)
			}
			seen[id] = in
		}
		if JobID("commit", in) != JobID("commit", in) {
			t.Errorf("JobID not deterministic for %q", in)
		}
	}
}

func TestWellFormedName(t *testing.T) {
	for s, want := range map[string]bool{
		"vda": true, "a.b_c-9": true, "9abc": false, "#block1": false, "": false,
		"a b": false, strings.Repeat("a", 31): true, strings.Repeat("a", 32): false,
	} {
		if got := WellFormedName(s); got != want {
			t.Errorf("WellFormedName(%q) = %v, want %v", s, got, want)
		}
	}
}
