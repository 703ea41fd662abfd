package integration

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/qchain/qchain/fixtures"
)

// TestLeaksFromQemu: clusters that qemu itself leaked (a snapshot that
// fails on refcount_bits=1; qemu-io's abort leaves no leak with qemu 7.2)
// are all reported by `leaks`, as many as qemu-img check counts.
func TestLeaksFromQemu(t *testing.T) {
	bin := requireTools(t)
	ctx := context.Background()
	for _, c := range fixtures.QemuCases() {
		if c.Name != "leak-refcount1-snapshot" && c.Name != "leak-crafted" {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			dir := t.TempDir()
			img := c.Build(t, dir)
			ref := fixtures.Run(ctx, dir, "qemu-img", "check", "--output=json", img)
			var chk struct {
				Leaks int64 `json:"leaks"`
			}
			if err := json.Unmarshal(ref.Stdout, &chk); err != nil || chk.Leaks == 0 {
				t.Fatalf("qemu-img check finds no leak to look for: %v %s", err, ref.Stdout)
			}
			got := fixtures.Run(ctx, dir, bin, "leaks", "--output=json", img)
			if got.ExitCode != 0 {
				t.Fatalf("%s: exit %d %s", got.Cmd, got.ExitCode, got.Stderr)
			}
			var runs []struct {
				Length uint64 `json:"length"`
				Kind   string `json:"kind"`
			}
			if err := json.Unmarshal(got.Stdout, &runs); err != nil {
				t.Fatalf("leaks output: %v\n%s", err, got.Stdout)
			}
			info := fixtures.Run(ctx, dir, "qemu-img", "info", "--output=json", img)
			var in struct {
				ClusterSize uint64 `json:"cluster-size"`
			}
			json.Unmarshal(info.Stdout, &in)
			var leaked uint64
			for _, r := range runs {
				if r.Kind == "leaked" {
					leaked += r.Length / in.ClusterSize
				}
			}
			if int64(leaked) != chk.Leaks {
				t.Errorf("leaks reports %d leaked clusters, qemu-img check %d\n%s", leaked, chk.Leaks, got.Stdout)
			}
		})
	}
}
