package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// messageCommands lists every reading command, human and JSON, run on a
// malformed case: image is the case's image, dir its folder, out a file
// outside it.
func messageCommands(image, dir, out string) [][]string {
	cmds := [][]string{
		{"info", image},
		{"info", "--output=json", image},
		{"info", "--backing-chain", image},
		{"info", "-f", "qcow2", image},
		{"map", image},
		{"map", "--output=json", image},
		{"map", "-f", "qcow2", image},
		{"check", image},
		{"check", "--output=json", image},
		{"compare", image, image},
		{"export", "-o", out, image},
		{"layers", image},
		{"layers", "--output=json", image},
		{"clusters", image},
		{"clusters", "--output=json", image},
		{"leaks", image},
		{"leaks", "--output=json", image},
		{"diff", image, image},
		{"diff", "--output=json", image, image},
		{"who-uses", "--search", dir, image},
		{"who-uses", "--output=json", "--search", dir, image},
	}
	for _, sel := range [][]string{{"--header"}, {"--extensions"}, {"--l1"}, {"--l2", "0"},
		{"--refcounts"}, {"--snapshots"}, {"--bitmaps"}} {
		cmds = append(cmds, append(append([]string{"dump"}, sel...), image),
			append(append([]string{"dump", "--output=json"}, sel...), image))
	}
	return cmds
}

// messageHints are the hints qchain's errors may end with, and a text the
// message must hold for the hint to apply.
var messageHints = []struct{ hint, when string }{
	// Only qemu-img's human map layout cannot show such clusters.
	{"(use --output=json)", "compressed clusters"},
	// dump prints the raw header of an image that does not open.
	{"(partial answer: the raw header fields, unvalidated)", ""},
}

// messageSlips returns what is wrong with one line qchain printed as an
// error: an empty segment, a file named twice as a prefix, a hint that
// does not apply. files are the names (base and full) of the case's files.
func messageSlips(msg string, files map[string]bool) []string {
	var slips []string
	body, ok := strings.CutPrefix(msg, "qchain: ")
	if !ok {
		return []string{"does not start with \"qchain: \""}
	}
	if strings.Contains(body, ": :") || strings.HasPrefix(body, ": ") || strings.HasPrefix(body, ":") {
		slips = append(slips, "empty segment")
	}
	if strings.HasSuffix(body, ":") || strings.HasSuffix(body, ": ") {
		slips = append(slips, "ends with a colon")
	}
	segs := strings.Split(body, ": ")
	named := map[string]bool{}
	for i, s := range segs {
		if strings.TrimSpace(s) == "" {
			slips = append(slips, "empty segment")
		}
		if i > 0 && s == segs[i-1] {
			slips = append(slips, "segment "+s+" twice in a row")
		}
		if files[s] {
			key := filepath.Base(s)
			if named[key] {
				slips = append(slips, "file "+key+" named twice")
			}
			named[key] = true
		}
	}
	for _, h := range messageHints {
		if strings.Contains(body, h.hint) && !strings.Contains(body, h.when) {
			slips = append(slips, "hint "+h.hint+" does not apply")
		}
		body = strings.ReplaceAll(body, h.hint, "")
	}
	if strings.Contains(body, "(use ") || strings.Contains(body, "run `") {
		slips = append(slips, "unknown hint")
	}
	return slips
}

// TestMalformedMessages runs every reading command, human and JSON, on
// every image of the malformed corpus and reads what it printed on stderr
// as qchain's own: at most one line, starting "qchain: ", without an empty
// segment (": :", a trailing ": "), a file named twice, or a hint that
// does not apply. check's report lines (qemu-img's layout) are not
// qchain's messages and are skipped.
func TestMalformedMessages(t *testing.T) {
	bin := requireTools(t)
	for _, c := range fixtures.MalformedCases() {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			files := map[string]bool{}
			for _, name := range c.Order {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, c.Files[name], 0o644); err != nil {
					t.Fatal(err)
				}
				files[name], files[p] = true, true
			}
			out := filepath.Join(t.TempDir(), "export.raw")
			files[out] = true
			image := filepath.Join(dir, c.Image())
			for _, args := range messageCommands(image, dir, out) {
				os.Remove(out)
				r := runMalformed(bin, dir, args)
				what := "qchain " + strings.Join(args, " ")
				if r.err != nil {
					t.Errorf("%s: %v after %v", what, r.err, r.elapsed.Round(time.Millisecond))
					continue
				}
				var own []string
				for _, l := range strings.Split(strings.TrimRight(r.stderr, "\n"), "\n") {
					if l == "" || args[0] == "check" && !strings.HasPrefix(l, "qchain:") {
						continue
					}
					own = append(own, l)
				}
				if len(own) > 1 {
					t.Errorf("%s: %d lines of error, want one:\n%s", what, len(own), strings.Join(own, "\n"))
				}
				for _, l := range own {
					for _, s := range messageSlips(l, files) {
						t.Errorf("%s: %s:\n%s", what, s, l)
					}
				}
			}
		})
	}
}

// TestMessageSlips checks the checker on the slips issue 12 reported.
func TestMessageSlips(t *testing.T) {
	files := map[string]bool{"image.qcow2": true, "/d/image.qcow2": true}
	for _, tc := range []struct {
		msg  string
		want string // a slip, or "" for none
	}{
		{"qchain: image.qcow2: : qcow2: unsupported: unknown incompatible feature(s): bit 40 (use --output=json)", "empty segment"},
		{"qchain: image.qcow2: : qcow2: unsupported: x", "empty segment"},
		{"qchain: image.qcow2: qcow2: unsupported: x (use --output=json)", "does not apply"},
		{"qchain: /d/image.qcow2: /d/image.qcow2: bitmap directory is past the end of the file", "named twice"},
		{"qchain: image.qcow2: backing file: ", "colon"},
		{"qchain: image.qcow2: file contains external, encrypted or compressed clusters (use --output=json)", ""},
		{"qchain: image.qcow2: qcow2: unsupported: unknown incompatible feature(s): bit 40", ""},
	} {
		slips := strings.Join(messageSlips(tc.msg, files), "; ")
		if tc.want == "" && slips != "" || !strings.Contains(slips, tc.want) {
			t.Errorf("%q: slips %q, want %q", tc.msg, slips, tc.want)
		}
	}
}
