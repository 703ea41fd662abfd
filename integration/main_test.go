package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/qchain/qchain/fixtures"
)

// buildTimeout bounds the one go build of the CLI.
const buildTimeout = 5 * time.Minute

// The binary under test: $QCHAIN_BIN, or built once into buildDir (made and
// removed by TestMain) by the first test that asks for it, so a run of
// tests that need no binary builds nothing.
var (
	buildDir   string
	qchainOnce sync.Once
	qchainBin  string
	qchainErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qchain-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// findQchain returns the binary named by $QCHAIN_BIN or builds one with
// go build ./cli/qchain, run from the module root.
func findQchain() (string, error) {
	if bin := os.Getenv("QCHAIN_BIN"); bin != "" {
		bin, err := filepath.Abs(bin)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("QCHAIN_BIN: %w", err)
		}
		return bin, nil
	}
	root, err := findModuleRoot(".")
	if err != nil {
		return "", err
	}
	out := filepath.Join(buildDir, "qchain")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cli/qchain")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -o %s ./cli/qchain (in %s): %v\n%s", out, root, err, b)
	}
	return out, nil
}

// requireTools skips the test when qemu-img is missing and fails it when
// the qchain binary could not be found or built. It returns the binary.
func requireTools(t *testing.T) string {
	t.Helper()
	if !fixtures.HaveQemuImg() {
		t.Skip("qemu-img not on PATH")
	}
	qchainOnce.Do(func() { qchainBin, qchainErr = findQchain() })
	if qchainErr != nil {
		t.Fatalf("no qchain binary to test: %v", qchainErr)
	}
	return qchainBin
}
