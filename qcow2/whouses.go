package qcow2

import (
	"io/fs"
	"os"
	"path/filepath"
)

// Dependant is an image whose backing chain includes a given file.
type Dependant struct {
	Image string `json:"image"`
	// Depth is the position of the file in the image's chain: 1 for its
	// backing file, 2 for the backing file's backing file, and so on.
	Depth int `json:"depth"`
	// Via is the chain from the image down to the file, top first.
	Via []string `json:"via"`
}

// WhoUses calls fn for every qcow2 image under the folders whose backing
// chain includes target (the same file, by device and inode). It reads only
// headers and follows backing names as QEMU resolves them; images it cannot
// parse and chains it cannot follow are skipped.
func WhoUses(target string, dirs []string, fn func(Dependant) error) error {
	tst, err := os.Stat(target)
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if p == dir {
					return err
				}
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			if dep, ok := chainReaches(p, tst); ok {
				return fn(dep)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// chainReaches follows the backing names of image p and reports whether
// the chain reaches target.
func chainReaches(p string, target os.FileInfo) (Dependant, bool) {
	dep := Dependant{Image: p}
	var seen []os.FileInfo
	cur := p
	for depth := 0; depth <= MaxChainDepth; depth++ {
		st, err := os.Stat(cur)
		if err != nil {
			return dep, false
		}
		if depth > 0 && os.SameFile(st, target) {
			dep.Depth = depth
			dep.Via = append(dep.Via, cur)
			return dep, true
		}
		for _, s := range seen {
			if os.SameFile(s, st) {
				return dep, false
			}
		}
		seen = append(seen, st)
		backing, ok := backingName(cur)
		if !ok || backing == "" || hasProtocol(backing) {
			return dep, false
		}
		dep.Via = append(dep.Via, cur)
		cur = BackingPath(cur, backing)
	}
	return dep, false
}

// backingName returns the backing file name recorded in a qcow2 header.
func backingName(p string) (string, bool) {
	f, err := os.Open(p)
	if err != nil {
		return "", false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", false
	}
	if ProbeFormat(f) != "qcow2" {
		return "", false
	}
	q, err := NewFile(f, st.Size())
	if err != nil {
		return "", false
	}
	return q.Header.BackingFile, true
}
