package backup

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// IndexName is the index file of a backup folder.
const IndexName = "backup.json"

// IndexVersion is the version of backup.json this package writes and reads.
const IndexVersion = 1

// Limits on what backup.json may hold; it is untrusted input.
const (
	// MaxIndexSize bounds the bytes of backup.json read.
	MaxIndexSize = 16 << 20
	// MaxPoints bounds the points of one folder.
	MaxPoints = 100000
	// MaxDisks bounds the disks of one VM.
	MaxDisks = 64
	// MaxPointNumber bounds a point number (file names stay short).
	MaxPointNumber = 1 << 40
)

// Kinds of point.
const (
	Full        = "full"
	Incremental = "incremental"
)

// ErrNoIndex reports a folder without backup.json.
var ErrNoIndex = errors.New("not a backup folder (no " + IndexName + ")")

// ErrCorruptIndex reports a backup.json that cannot be used.
var ErrCorruptIndex = errors.New("corrupt " + IndexName)

// Index is backup.json: what a backup folder holds.
type Index struct {
	Version int `json:"version"`
	// VM is the name of the VM the folder backs up.
	VM string `json:"vm"`
	// ID names the folder in its bitmaps (BitmapName).
	ID string `json:"id"`
	// Points, oldest first. Numbers are never reused.
	Points []Point `json:"points"`
	// Merging is set while Merge streams the older points into the
	// point of that number; Merge run again finishes it.
	Merging int64 `json:"merging,omitempty"`
}

// Point is one point in time of every disk.
type Point struct {
	Point int64     `json:"point"`
	Time  time.Time `json:"time"`
	// Kind is Full or Incremental (the point's files have the previous
	// point's files as backing).
	Kind string `json:"kind"`
	// Live is true when the VM's qemu ran the backup.
	Live bool `json:"live"`
	// Reason says why a point is full.
	Reason string      `json:"reason,omitempty"`
	Disks  []PointDisk `json:"disks"`
	// Revert is the VM's latest snapshot revert when the point began
	// (revertMark): the next point tells by it whether the VM was
	// reverted since, without comparing times of one second's
	// resolution. Empty in folders written before it was recorded.
	Revert string `json:"revert,omitempty"`
}

// PointDisk is one disk's file of a point.
type PointDisk struct {
	Target string `json:"target"`
	// File is the point's file in the folder: Target.Point.qcow2.
	File string `json:"file"`
	// Size is the disk's virtual size.
	Size uint64 `json:"size"`
	// Bytes is the file's size.
	Bytes int64 `json:"bytes"`
	// Copied is the backup job's total progress: the bytes it went
	// through (a full point counts the areas that read as zeros too).
	Copied int64 `json:"copied"`
	// SHA256 is the file's checksum, hex.
	SHA256 string `json:"sha256"`
}

// FileName returns the name of a disk's file for point n.
func FileName(target string, n int64) string {
	return target + "." + strconv.FormatInt(n, 10) + ".qcow2"
}

// BitmapName returns the name of the bitmap that records the writes to a
// disk since point n of the folder with this id began.
func BitmapName(id string, n int64) string { return BitmapPrefix(id) + strconv.FormatInt(n, 10) }

// BitmapPrefix is what the names of a folder's bitmaps start with.
func BitmapPrefix(id string) string { return "qchain-backup-" + id + "-" }

// newID returns a random folder id.
func newID() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// Point returns the point numbered n, or nil.
func (x *Index) Point(n int64) *Point {
	for i := range x.Points {
		if x.Points[i].Point == n {
			return &x.Points[i]
		}
	}
	return nil
}

// Last returns the newest point, or nil.
func (x *Index) Last() *Point {
	if len(x.Points) == 0 {
		return nil
	}
	return &x.Points[len(x.Points)-1]
}

// Disk returns the point's file of target, or nil.
func (p *Point) Disk(target string) *PointDisk {
	for i := range p.Disks {
		if p.Disks[i].Target == target {
			return &p.Disks[i]
		}
	}
	return nil
}

// Previous returns the point before p in x, or nil.
func (x *Index) Previous(p *Point) *Point {
	for i := range x.Points {
		if x.Points[i].Point == p.Point && i > 0 {
			return &x.Points[i-1]
		}
	}
	return nil
}

// ReadIndex reads and checks dir's backup.json. A folder without one gives
// an error wrapping ErrNoIndex; one that cannot be used, ErrCorruptIndex.
func ReadIndex(dir string) (*Index, error) {
	name := filepath.Join(dir, IndexName)
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNoIndex)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxIndexSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	x, err := ParseIndex(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return x, nil
}

// ParseIndex decodes and checks the content of a backup.json; errors wrap
// ErrCorruptIndex.
func ParseIndex(b []byte) (*Index, error) {
	if len(b) > MaxIndexSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrCorruptIndex, MaxIndexSize)
	}
	x := &Index{}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(x); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptIndex, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the index", ErrCorruptIndex)
	}
	if err := x.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptIndex, err)
	}
	return x, nil
}

// validate checks everything later code relies on.
func (x *Index) validate() error {
	if x.Version != IndexVersion {
		return fmt.Errorf("version %d, this qchain reads version %d", x.Version, IndexVersion)
	}
	if err := checkName("VM", x.VM); err != nil {
		return err
	}
	if len(x.ID) != 12 || strings.Trim(x.ID, "0123456789abcdef") != "" {
		return fmt.Errorf("id %q is not 12 hex digits", x.ID)
	}
	if len(x.Points) > MaxPoints {
		return fmt.Errorf("%d points, more than %d", len(x.Points), MaxPoints)
	}
	var prev int64
	for i, p := range x.Points {
		if p.Point <= prev || p.Point > MaxPointNumber {
			return fmt.Errorf("point %d: numbers must grow from 1 up to %d", p.Point, int64(MaxPointNumber))
		}
		prev = p.Point
		if p.Kind != Full && p.Kind != Incremental {
			return fmt.Errorf("point %d: kind %q", p.Point, p.Kind)
		}
		if len(p.Revert) > maxRevertMark {
			return fmt.Errorf("point %d: revert mark of %d bytes", p.Point, len(p.Revert))
		}
		if i == 0 && p.Kind != Full {
			return fmt.Errorf("point %d: the oldest point must be full", p.Point)
		}
		if len(p.Disks) == 0 || len(p.Disks) > MaxDisks {
			return fmt.Errorf("point %d: %d disks", p.Point, len(p.Disks))
		}
		seen := map[string]bool{}
		for _, d := range p.Disks {
			if err := checkName("disk target", d.Target); err != nil {
				return fmt.Errorf("point %d: %v", p.Point, err)
			}
			if seen[d.Target] {
				return fmt.Errorf("point %d: disk %s twice", p.Point, d.Target)
			}
			seen[d.Target] = true
			if d.File != FileName(d.Target, p.Point) {
				return fmt.Errorf("point %d disk %s: file %q, want %q", p.Point, d.Target, d.File, FileName(d.Target, p.Point))
			}
			if len(d.SHA256) != 64 || strings.Trim(d.SHA256, "0123456789abcdef") != "" {
				return fmt.Errorf("point %d disk %s: sha256 %q", p.Point, d.Target, d.SHA256)
			}
		}
		if i > 0 && p.Kind == Incremental {
			prev := x.Points[i-1]
			if len(prev.Disks) != len(p.Disks) {
				return fmt.Errorf("point %d: incremental with other disks than point %d", p.Point, prev.Point)
			}
			for _, d := range p.Disks {
				if prev.Disk(d.Target) == nil {
					return fmt.Errorf("point %d: disk %s is not in point %d", p.Point, d.Target, prev.Point)
				}
			}
		}
	}
	if x.Merging != 0 && x.Point(x.Merging) == nil {
		return fmt.Errorf("merging into point %d, which is not listed", x.Merging)
	}
	return nil
}

// maxRevertMark bounds Point.Revert: a snapshot name and a time.
const maxRevertMark = 256

// checkName accepts names safe as file name parts (as chain does).
func checkName(what, s string) error {
	if s == "" || len(s) > 64 || s[0] == '.' {
		return fmt.Errorf("%s name %q must be 1 to 64 characters, not starting with '.'", what, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%s name %q may hold only letters, digits, '-', '_' and '.'", what, s)
		}
	}
	return nil
}

// writeIndex replaces dir's backup.json atomically.
func writeIndex(dir string, x *Index) error {
	if err := x.validate(); err != nil {
		return fmt.Errorf("internal error: index to write: %v", err)
	}
	b, err := json.MarshalIndent(x, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, IndexName), append(b, '\n'))
}

// writeAtomic replaces path with data: temp file, fsync, rename, fsync of
// the folder.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// syncFile fsyncs a file's data.
func syncFile(name string) error {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
