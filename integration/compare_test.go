package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qchain/qchain/fixtures"
)

// TestDifferentialCompare runs `qemu-img compare [-s] A B` and `qchain
// compare [-s] A B` on pairs of images and demands the same exit code:
// 0 same, 1 different, 2 error. wantLoose and wantStrict are what qemu-img
// 7.2 answers; they are checked too, so a pair that stopped meaning what
// its name says is noticed.
func TestDifferentialCompare(t *testing.T) {
	bin := requireTools(t)
	root := t.TempDir()
	q := fixtures.NewQemu(t, root)

	// a: a two-layer chain with data, a zero cluster and a hole.
	q.Create("base.qcow2", "4M")
	q.IO("qcow2", "base.qcow2", "write -q -P 0x01 0 1M", "write -q -P 0x02 3M 64k")
	a := q.Overlay("a.qcow2", "base.qcow2", "qcow2", "")
	q.IO("qcow2", a, "write -q -P 0x03 512k 4k", "write -q -z 3M 64k")

	flat := q.Path("flat.qcow2") // same content, one layer, another layout
	q.Img("convert", "-O", "qcow2", a, flat)
	raw := q.Path("flat.raw")
	q.Img("convert", "-O", "raw", a, raw)
	compressed := q.Path("compressed.qcow2")
	q.Img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", a, compressed)

	oneByte := q.Path("onebyte.qcow2")
	q.Img("convert", "-O", "qcow2", a, oneByte)
	q.IO("qcow2", oneByte, "write -q -P 0xff 2500000 1")

	zeroTail := q.Path("zerotail.qcow2") // 8M, the last 4M reads as zeros
	q.Img("convert", "-O", "qcow2", a, zeroTail)
	q.Img("resize", "-q", zeroTail, "8M")

	dataTail := q.Path("datatail.qcow2")
	q.Img("convert", "-O", "qcow2", a, dataTail)
	q.Img("resize", "-q", dataTail, "8M")
	q.IO("qcow2", dataTail, "write -q -P 0x04 7M 4k")

	allocZero := q.Path("alloczero.qcow2") // flat, plus explicit zeros over a hole
	q.Img("convert", "-O", "qcow2", a, allocZero)
	q.IO("qcow2", allocZero, "write -q -P 0x00 2M 64k")

	otherBase := q.Path("otherbase.qcow2") // differs only in its backing file
	q.Create("base2.qcow2", "4M")
	q.IO("qcow2", "base2.qcow2", "write -q -P 0x01 0 1M", "write -q -P 0x05 3M 128k")
	q.Overlay("otherbase.qcow2", "base2.qcow2", "qcow2", "")
	q.IO("qcow2", otherBase, "write -q -P 0x03 512k 4k", "write -q -z 3M 64k")

	missing := filepath.Join(root, "missing.qcow2")

	pairs := []struct {
		name                  string
		a, b                  string
		wantLoose, wantStrict int
	}{
		{"same-file", a, a, 0, 0},
		{"chain-vs-flat", a, flat, 0, 1},
		{"flat-vs-chain", flat, a, 0, 1},
		{"chain-vs-raw", a, raw, 0, 1},
		{"chain-vs-compressed", a, compressed, 0, 1},
		{"flat-vs-alloc-zero", flat, allocZero, 0, 1},
		{"one-byte", a, oneByte, 1, 1},
		{"one-byte-reversed", oneByte, a, 1, 1},
		{"zero-tail", a, zeroTail, 0, 1},
		{"zero-tail-reversed", zeroTail, a, 0, 1},
		{"data-tail", a, dataTail, 1, 1},
		{"data-tail-reversed", dataTail, a, 1, 1},
		{"other-backing", a, otherBase, 1, 1},
		{"missing-second", a, missing, 2, 2},
		{"missing-first", missing, a, 2, 2},
	}
	before := mustFingerprint(t, root)
	ctx := context.Background()
	for _, p := range pairs {
		for _, strict := range []bool{false, true} {
			name, want := p.name, p.wantLoose
			args := []string{"compare"}
			if strict {
				name, want = name+"-strict", p.wantStrict
				args = append(args, "-s")
			}
			args = append(args, p.a, p.b)
			t.Run(name, func(t *testing.T) {
				ref := fixtures.Run(ctx, root, "qemu-img", args...)
				if ref.Err != nil {
					t.Fatal(ref.Err)
				}
				if ref.ExitCode != want {
					t.Fatalf("fixture assumption broken: %s exits %d, not %d\n%s%s",
						ref.Cmd, ref.ExitCode, want, ref.Stdout, ref.Stderr)
				}
				got := fixtures.Run(ctx, root, bin, args...)
				if got.Err != nil {
					t.Fatal(got.Err)
				}
				if got.ExitCode != ref.ExitCode {
					t.Errorf("qchain %v: exit %d, qemu-img exits %d (%s)\nqchain stdout: %s\nqchain stderr: %s",
						args, got.ExitCode, ref.ExitCode, firstLine(ref.Stdout, ref.Stderr), got.Stdout, got.Stderr)
				}
			})
		}
	}
	if d := fingerprintDiff(before, mustFingerprint(t, root)); d != "" {
		t.Errorf("compare changed files:\n%s", d)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Errorf("compare created %s", missing)
	}
}

// firstLine returns the first non-empty line of the outputs, for messages.
func firstLine(outs ...[]byte) string {
	for _, o := range outs {
		for _, l := range strings.Split(string(o), "\n") {
			if l != "" {
				return l
			}
		}
	}
	return ""
}
