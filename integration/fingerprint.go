package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// chainFileState is what inspection must leave unchanged in a file.
type chainFileState struct {
	Size    int64
	ModTime int64 // ns
	SHA256  string
}

// fingerprint records every regular file under root (the image, its
// backing files and data files), keyed by path relative to root.
func fingerprint(root string) (map[string]chainFileState, error) {
	states := map[string]chainFileState{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		states[rel] = chainFileState{info.Size(), info.ModTime().UnixNano(), hex.EncodeToString(h.Sum(nil))}
		return nil
	})
	return states, err
}

// fingerprintDiff describes how after differs from before, "" if not.
func fingerprintDiff(before, after map[string]chainFileState) string {
	var lines []string
	for name, b := range before {
		a, ok := after[name]
		switch {
		case !ok:
			lines = append(lines, name+": removed")
		case a != b:
			lines = append(lines, fmt.Sprintf("%s: before %+v, after %+v", name, b, a))
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			lines = append(lines, name+": created")
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
