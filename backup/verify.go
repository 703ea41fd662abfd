package backup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/qchain/qchain/qcow2"
)

// Problem is one thing Verify found wrong.
type Problem struct {
	Point  int64  `json:"point"`
	Target string `json:"target"`
	File   string `json:"file"`
	Msg    string `json:"message"`
}

func (p Problem) String() string {
	return fmt.Sprintf("point %d disk %s: %s: %s", p.Point, p.Target, p.File, p.Msg)
}

// Verify checks every point file of dir: it exists, qchain's check finds it
// clean, its backing file is the previous point's file (none for a full
// point), its chain opens inside dir and has the recorded size, and its
// sha256 is the recorded one. It returns the problems found (none: the
// folder is sound); the error is for a folder that cannot be read at all.
func Verify(dir string) (*Index, []Problem, error) {
	x, err := ReadIndex(dir)
	if err != nil {
		return nil, nil, err
	}
	var probs []Problem
	if x.Merging != 0 {
		probs = append(probs, Problem{Point: x.Merging, File: IndexName, Msg: "a merge into this point was interrupted: run `qchain backup merge` again"})
	}
	for i := range x.Points {
		p := &x.Points[i]
		for _, d := range p.Disks {
			if msg := checkPointFile(dir, x, p, d); msg != "" {
				probs = append(probs, Problem{Point: p.Point, Target: d.Target, File: d.File, Msg: msg})
			}
		}
	}
	return x, probs, nil
}

// checkPointFile checks one disk's file of point p; "" when it is sound.
func checkPointFile(dir string, x *Index, p *Point, d PointDisk) string {
	if msg := checkPointStructure(dir, x, p, d); msg != "" {
		return msg
	}
	return checkSum(context.Background(), filepath.Join(dir, d.File), d.SHA256)
}

// checkPointStructure checks that one disk's file of point p exists and
// that its structure and chain are sound (everything but the checksum,
// and cheap: it reads metadata only); "" when they are.
func checkPointStructure(dir string, x *Index, p *Point, d PointDisk) string {
	if _, err := os.Lstat(filepath.Join(dir, d.File)); err != nil {
		return "missing"
	}
	return checkStructure(dir, x, p, d)
}

// checkSum compares a file's sha256 with the recorded one; "" when they
// are equal.
func checkSum(ctx context.Context, name, want string) string {
	sum, err := fileSHA256(ctx, name)
	if err != nil {
		return err.Error()
	}
	if sum != want {
		return fmt.Sprintf("sha256 %s, recorded %s", sum, want)
	}
	return ""
}

// checkStructure runs qchain's check on the file and follows its chain.
func checkStructure(dir string, x *Index, p *Point, d PointDisk) string {
	name := filepath.Join(dir, d.File)
	f, err := qcow2.Open(name)
	if err != nil {
		return err.Error()
	}
	res, err := f.Check()
	backing, backingFmt := f.Header.BackingFile, f.Header.BackingFormat
	f.Close()
	if err != nil {
		return "check: " + err.Error()
	}
	if res.ExitCode() != 0 {
		return fmt.Sprintf("check: %d corruptions, %d leaks, %d check errors", res.Corruptions, res.Leaks, res.CheckErrors)
	}
	want := ""
	if p.Kind == Incremental {
		prev := x.Previous(p)
		want = FileName(d.Target, prev.Point)
	}
	if backing != want || (want != "" && backingFmt != "qcow2") {
		if want == "" {
			return fmt.Sprintf("backing file %q, but point %d is full", backing, p.Point)
		}
		return fmt.Sprintf("backing file %q (format %q), want %q (qcow2)", backing, backingFmt, want)
	}
	c, err := qcow2.OpenChain(name, qcow2.ChainOptions{Root: dir})
	if err != nil {
		return "chain: " + err.Error()
	}
	defer c.Close()
	if c.Size() != d.Size {
		return fmt.Sprintf("virtual size %d, recorded %d", c.Size(), d.Size)
	}
	return ""
}

// chainFile is one file of a disk's chain at a point.
type chainFile struct {
	Point *Point
	Disk  PointDisk
	// Path is the file in the backup folder.
	Path string
}

// chainFiles returns the files of target's chain at point n, bottom (the
// full point) first, without checking them.
func chainFiles(dir string, x *Index, n int64, target string) ([]chainFile, error) {
	p := x.Point(n)
	if p == nil {
		return nil, fmt.Errorf("%s: no point %d", dir, n)
	}
	var files []chainFile
	for q := p; q != nil; q = x.Previous(q) {
		d := q.Disk(target)
		if d == nil {
			return nil, fmt.Errorf("%s: point %d has no disk %s", dir, q.Point, target)
		}
		files = append(files, chainFile{Point: q, Disk: *d, Path: filepath.Join(dir, d.File)})
		if q.Kind == Full {
			break
		}
	}
	slices.Reverse(files)
	return files, nil
}

// badFile reports a chain file that failed a check.
func badFile(dir, target string, f chainFile, msg string) error {
	return fmt.Errorf("%s: point %d disk %s: %s: %s", dir, f.Point.Point, target, f.Disk.File, msg)
}

// pointChain returns the files of target's chain at point n, top first,
// checking each file's structure and checksum.
func pointChain(dir string, x *Index, n int64, target string) ([]string, error) {
	files, err := chainFiles(dir, x, n, target)
	if err != nil {
		return nil, err
	}
	// Bottom first: a missing or bad file is named, not found missing
	// as the backing file of the one above it.
	out := make([]string, len(files))
	for i, f := range files {
		if msg := checkPointFile(dir, x, f.Point, f.Disk); msg != "" {
			return nil, badFile(dir, target, f, msg)
		}
		out[len(files)-1-i] = f.Path
	}
	return out, nil
}
