package chain

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/qchain/qchain/qcow2"
)

// chainOf returns the files of a file's backing chain, the file first,
// as absolute paths (names resolved as QEMU resolves them).
func chainOf(file string) ([]string, error) {
	var out []string
	cur := file
	for depth := 0; depth <= qcow2.MaxChainDepth; depth++ {
		abs, err := filepath.Abs(cur)
		if err != nil {
			return nil, err
		}
		out = append(out, abs)
		f, err := os.Open(abs)
		if err != nil {
			return nil, err
		}
		if qcow2.ProbeFormat(f) != "qcow2" {
			f.Close()
			return out, nil
		}
		st, _ := f.Stat()
		q, err := qcow2.NewFile(f, st.Size())
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", abs, err)
		}
		if q.Header.BackingFile == "" {
			return out, nil
		}
		cur = qcow2.BackingPath(abs, q.Header.BackingFile)
	}
	return nil, fmt.Errorf("%s: backing chain deeper than %d", file, qcow2.MaxChainDepth)
}

// backingOf returns the absolute path of a file's backing file ("" for
// none) and the name as recorded in its header.
func backingOf(file string) (abs, recorded, format string, err error) {
	f, err := qcow2.Open(file)
	if err != nil {
		return "", "", "", err
	}
	defer f.Close()
	if f.Header.BackingFile == "" {
		return "", "", "", nil
	}
	abs, err = filepath.Abs(qcow2.BackingPath(file, f.Header.BackingFile))
	return abs, f.Header.BackingFile, f.Header.BackingFormat, err
}

func sameFile(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

func inChain(chain []string, file string) int {
	for i, f := range chain {
		if sameFile(f, file) {
			return i
		}
	}
	return -1
}

// ChainFiles returns the absolute paths of a file's backing chain, the
// file first.
func ChainFiles(file string) ([]string, error) { return chainOf(file) }
