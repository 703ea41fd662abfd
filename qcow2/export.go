package qcow2

import (
	"fmt"
	"io"
	"os"
)

// exportChunk is how much guest data Export reads at a time.
const exportChunk = 2 << 20

// Export writes the guest-visible content of the chain to w. With sparse
// set, w must be an *os.File: runs that read as zeros are skipped (left as
// holes) and the file is truncated to the guest size.
func Export(c *Chain, w io.Writer, sparse bool) error {
	f, _ := w.(*os.File)
	if sparse && f == nil {
		sparse = false
	}
	size := c.Size()
	buf := make([]byte, exportChunk)
	walker := c.NewWalker()
	var written uint64 // for non-sparse output: bytes written so far
	zeros := make([]byte, exportChunk)
	for pos := uint64(0); pos < size; {
		s, err := walker.Status(pos, min(size, pos+exportChunk))
		if err != nil {
			return err
		}
		n := s.Length
		if !s.Data || s.Zero {
			if !sparse {
				if _, err := w.Write(zeros[:n]); err != nil {
					return err
				}
				written += n
			}
			pos += n
			continue
		}
		b := buf[:n]
		if err := walker.Read(b, pos); err != nil {
			return err
		}
		if sparse {
			if err := writeSparse(f, b, pos); err != nil {
				return err
			}
		} else if _, err := w.Write(b); err != nil {
			return err
		}
		pos += n
	}
	if sparse {
		if err := f.Truncate(int64(size)); err != nil {
			return fmt.Errorf("setting the output size: %w", err)
		}
	}
	return nil
}

// writeSparse writes b at off, skipping 4 KiB blocks that are all zeros.
func writeSparse(f *os.File, b []byte, off uint64) error {
	const blk = 4096
	for i := 0; i < len(b); {
		j := min(i+blk, len(b))
		if !allZero(b[i:j]) {
			// Extend the run over following non-zero blocks.
			k := j
			for k < len(b) && !allZero(b[k:min(k+blk, len(b))]) {
				k = min(k+blk, len(b))
			}
			if _, err := f.WriteAt(b[i:k], int64(off)+int64(i)); err != nil {
				return err
			}
			j = k
		}
		i = j
	}
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// Files returns the names of every file the chain reads: each layer and
// any external data file.
func (c *Chain) Files() []string {
	var out []string
	for _, l := range c.Layers {
		out = append(out, l.Filename())
		if f, ok := l.(*File); ok && f.Header.HasDataFile() && f.Header.DataFile != "" {
			out = append(out, f.Header.DataFile)
		}
	}
	return out
}
