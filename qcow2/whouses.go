package qcow2

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
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
// parse and chains it cannot follow are skipped. Each file's header is read
// once however many chains share it.
func WhoUses(target string, dirs []string, fn func(Dependant) error) error {
	tst, err := os.Stat(target)
	if err != nil {
		return err
	}
	memo := map[fileKey]reach{}
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
			st, err := os.Stat(p)
			if err != nil {
				return nil
			}
			if r := reachOf(p, st, tst, memo); r.depth > 0 {
				return fn(Dependant{Image: p, Depth: r.depth, Via: append([]string{p}, r.via...)})
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

type fileKey struct{ dev, ino uint64 }

// reach says how a file's chain reaches the target: depth 0 is the target
// itself, -1 never; via lists the files below this one down to the target.
type reach struct {
	depth int
	via   []string
}

func keyOf(st os.FileInfo) (fileKey, bool) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, false
	}
	return fileKey{uint64(sys.Dev), uint64(sys.Ino)}, true
}

// reachOf follows the backing names from file p down, memoizing every file
// it passes, until it meets the target, a known file, or the chain's end.
// via of a file lists the files below it down to the target, as its own
// chain spells their names.
func reachOf(p string, st, target os.FileInfo, memo map[fileKey]reach) reach {
	type step struct {
		key  fileKey
		name string
	}
	var path []step
	onPath := map[fileKey]bool{}
	tail := reach{depth: -1} // the reach of cur, where the walk stopped
	cur, cst := p, st
	for len(path) <= MaxChainDepth {
		if os.SameFile(cst, target) {
			tail = reach{depth: 0}
			break
		}
		key, ok := keyOf(cst)
		if !ok || onPath[key] {
			break // unknown identity or a loop: not followed
		}
		if r, ok := memo[key]; ok {
			tail = r
			break
		}
		onPath[key] = true
		path = append(path, step{key, cur})
		backing, ok := backingName(cur)
		if !ok || backing == "" || hasProtocol(backing) {
			break
		}
		next := BackingPath(cur, backing)
		nst, err := os.Stat(next)
		if err != nil {
			break
		}
		cur, cst = next, nst
	}
	if len(path) == 0 {
		return tail
	}
	// Unwind from the bottom: each file reaches the target one step
	// further than the file below it.
	below := cur
	if path[len(path)-1].name == cur {
		// The walk stopped on the last file itself (dead end): no reach.
		tail = reach{depth: -1}
	}
	for i := len(path) - 1; i >= 0; i-- {
		r := reach{depth: -1}
		if tail.depth >= 0 {
			r = reach{depth: tail.depth + 1, via: append([]string{below}, tail.via...)}
		}
		memo[path[i].key] = r
		tail, below = r, path[i].name
	}
	return tail
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
