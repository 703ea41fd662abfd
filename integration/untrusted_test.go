package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qchain/qchain/fixtures"
)

// TestEncryptedInfo: qemu-img describes encrypted images without a key;
// qchain's info must say the same, and reading data must fail clearly.
func TestEncryptedInfo(t *testing.T) {
	bin := requireTools(t)
	compat := compatFlags(t)
	ctx := context.Background()
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	// qemu's PBKDF benchmark fails now and then ("Unable to get accurate CPU
	// usage") when a short run measures as zero CPU time: retry.
	for try := 0; ; try++ {
		res := fixtures.Run(ctx, dir, "qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=abc",
			"-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256",
			"luks.qcow2", "16M")
		if res.Err == nil && res.ExitCode == 0 {
			break
		}
		if try == 20 {
			t.Fatalf("%s: %v %s", res.Cmd, res.Err, res.Stderr)
		}
	}
	q.Img("create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=abc",
		"-o", "encrypt.format=aes,encrypt.key-secret=s0", "aes.qcow2", "16M")
	for _, img := range []string{"luks.qcow2", "aes.qcow2"} {
		t.Run(img, func(t *testing.T) {
			for _, args := range [][]string{{"info", "--output=json", img}, {"info", "--backing-chain", "--output=json", img}} {
				ref := fixtures.Run(ctx, dir, "qemu-img", args...)
				compareJSONRun(t, ref, fixtures.Run(ctx, dir, bin, withFlags(args, compat)...))
			}
			for _, args := range [][]string{{"info", img}} {
				ref := fixtures.Run(ctx, dir, "qemu-img", args...)
				compareTextRun(t, ref, fixtures.Run(ctx, dir, bin, withFlags(args, compat)...))
			}
			got := fixtures.Run(ctx, dir, bin, "export", "-o", filepath.Join(t.TempDir(), "x.raw"), img)
			if got.ExitCode == 0 || !strings.Contains(string(got.Stderr), "encrypted") {
				t.Errorf("export of an encrypted image: exit %d, stderr %q; want a clear refusal", got.ExitCode, got.Stderr)
			}
		})
	}
}

// TestBackingRoot: a crafted backing name must not make qchain open a file
// outside --backing-root, and --no-backing inspects the file alone.
func TestBackingRoot(t *testing.T) {
	bin := requireTools(t)
	ctx := context.Background()
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret.raw")
	if err := os.WriteFile(secret, []byte("top secret contents"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	q := fixtures.NewQemu(t, root)
	q.Create("base.qcow2", "1M")
	q.Overlay("good.qcow2", "base.qcow2", "qcow2", "")
	// Absolute, relative-escaping and symlinked names that all reach outside.
	q.Overlay("abs.qcow2", secret, "raw", "1M")
	q.Overlay("rel.qcow2", secret, "raw", "1M")
	rel, _ := filepath.Rel(root, secret)
	q.Img("rebase", "-u", "-b", rel, "-F", "raw", "rel.qcow2")
	if err := os.Symlink(secret, filepath.Join(root, "link.raw")); err != nil {
		t.Fatal(err)
	}
	q.Overlay("link.qcow2", "link.raw", "raw", "1M")

	for _, cmd := range [][]string{{"info", "--backing-chain"}, {"map"}, {"export", "-o", filepath.Join(t.TempDir(), "o.raw")}} {
		for _, img := range []string{"abs.qcow2", "rel.qcow2", "link.qcow2"} {
			args := append(append(append([]string{}, cmd...), "--backing-root", root), img)
			got := fixtures.Run(ctx, root, bin, args...)
			if got.ExitCode == 0 || !strings.Contains(string(got.Stderr), "outside the backing root") {
				t.Errorf("%s: exit %d, stderr %q; want a refusal naming the backing root", got.Cmd, got.ExitCode, got.Stderr)
			}
			if strings.Contains(string(got.Stdout), "secret") {
				t.Errorf("%s leaked the outside file: %s", got.Cmd, got.Stdout)
			}
		}
		args := append(append(append([]string{}, cmd...), "--backing-root", root), "good.qcow2")
		if got := fixtures.Run(ctx, root, bin, args...); got.ExitCode != 0 {
			t.Errorf("%s: exit %d inside the root: %s", got.Cmd, got.ExitCode, got.Stderr)
		}
	}
	// --no-backing reads the overlay alone even when its backing file is gone.
	q.Create("gone.qcow2", "1M")
	q.Overlay("orphan.qcow2", "gone.qcow2", "qcow2", "1M")
	os.Remove(filepath.Join(root, "gone.qcow2"))
	if got := fixtures.Run(ctx, root, bin, "map", "--output=json", "orphan.qcow2"); got.ExitCode == 0 {
		t.Errorf("map of an overlay with a missing backing file succeeded")
	}
	got := fixtures.Run(ctx, root, bin, "map", "--no-backing", "--output=json", "orphan.qcow2")
	if got.ExitCode != 0 || !strings.Contains(string(got.Stdout), `"depth": 0, "present": false`) {
		t.Errorf("map --no-backing: exit %d, out %s, err %s", got.ExitCode, got.Stdout, got.Stderr)
	}
}

// TestProbedBackingFormat: a backing file with no recorded format is
// probed as qemu-img does, and the human info says so.
func TestProbedBackingFormat(t *testing.T) {
	bin := requireTools(t)
	ctx := context.Background()
	dir := t.TempDir()
	q := fixtures.NewQemu(t, dir)
	q.CreateRaw("base.raw", "1M")
	q.Overlay("top.qcow2", "base.raw", "raw", "")
	fixtures.DropBackingFormat(t, filepath.Join(dir, "top.qcow2"))
	got := fixtures.Run(ctx, dir, bin, "info", "--backing-chain", "top.qcow2")
	out := string(got.Stdout)
	if got.ExitCode != 0 || !strings.Contains(out, "backing file format: none recorded") || !strings.Contains(out, "format probed: yes") {
		t.Errorf("info --backing-chain: exit %d\n%s%s", got.ExitCode, out, got.Stderr)
	}
}
