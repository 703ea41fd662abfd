package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// LockName is the lock file of a backup folder: Create and Merge hold it.
const LockName = "backup.lock"

// pointFile matches the names of point files: target, number.
var pointFile = regexp.MustCompile(`^([A-Za-z0-9_-][A-Za-z0-9_.-]{0,63})\.([0-9]{1,13})\.qcow2$`)

// sumBuffer is the read size of fileSHA256: large reads keep the syscall
// count low on files of many GiB.
const sumBuffer = 1 << 20

// fileSHA256 returns the hex sha256 of a file's bytes. It stops with ctx's
// error when ctx is done.
func fileSHA256(ctx context.Context, name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, sumBuffer)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// tempName is where a point file is written before it is renamed.
func tempName(dir, file string) string { return filepath.Join(dir, "."+file+".tmp") }

// lockDir takes the folder's lock, failing at once if another qchain holds
// it.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, LockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: another qchain is writing to this backup folder", dir)
	}
	return func() { f.Close() }, nil
}

// removeLeftovers removes what an interrupted run left in dir: temporary
// files, and point files no point of x lists (renamed before the index
// was updated, or dropped by a merge that stopped before removing them).
// It returns the names removed. Files of other names are left alone.
func removeLeftovers(dir string, x *Index) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		leftover := false
		switch {
		case strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp"):
			leftover = true
		case pointFile.MatchString(name) && x != nil:
			m := pointFile.FindStringSubmatch(name)
			n, _ := strconv.ParseInt(m[2], 10, 64)
			p := x.Point(n)
			leftover = p == nil || p.Disk(m[1]) == nil
		}
		if !leftover {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return removed, err
		}
		removed = append(removed, name)
	}
	if len(removed) > 0 {
		return removed, syncDir(dir)
	}
	return nil, nil
}
