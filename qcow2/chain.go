package qcow2

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// MaxChainDepth is the deepest backing chain OpenChain follows.
const MaxChainDepth = 256

// ChainOptions controls how OpenChain follows backing files. The zero value
// follows the whole chain with no confinement.
type ChainOptions struct {
	// Root, when not empty, confines every file the chain opens (images,
	// backing files, external data files) to this folder, after symlinks
	// are resolved. Use it for images from untrusted sources.
	Root string
	// NoBacking opens the top image alone.
	NoBacking bool
	// Format is the format of the top image ("qcow2" or "raw"); empty
	// probes it as qemu-img does.
	Format string
	// NoDataFile leaves external data files unopened, as qemu-img info
	// does: the chain can be described whether or not they exist, and
	// reading guest data opens them when it needs them.
	NoDataFile bool
}

// Chain is a top image and its backing files, top first.
type Chain struct {
	Layers []Layer
	// Probed[i] is true when layer i's format was probed because nothing
	// recorded it (the overlay's header had no backing format).
	Probed []bool
}

// Top returns the top layer.
func (c *Chain) Top() Layer { return c.Layers[0] }

// Size returns the guest size of the chain: the top layer's size.
func (c *Chain) Size() uint64 { return c.Layers[0].Size() }

// Close closes every layer.
func (c *Chain) Close() error {
	var first error
	for _, l := range c.Layers {
		if err := l.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// BackingPath joins a backing file name to the overlay's name the way QEMU
// does (path_combine): a relative name is appended to the overlay's
// directory part as a plain string, with no normalisation.
func BackingPath(overlay, backing string) string {
	if backing == "" || strings.HasPrefix(backing, "/") || hasProtocol(backing) {
		return backing
	}
	i := strings.LastIndexByte(overlay, '/')
	if i < 0 {
		return backing
	}
	return overlay[:i+1] + backing
}

// hasProtocol reports whether QEMU would read name as a protocol URL
// ("nbd:...", "json:{...}"): a colon before any slash.
func hasProtocol(name string) bool {
	c := strings.IndexByte(name, ':')
	if c < 0 {
		return false
	}
	s := strings.IndexByte(name, '/')
	return s < 0 || c < s
}

// confine checks that name lies inside root, after resolving symlinks.
func confine(root, name string) error {
	if root == "" {
		return nil
	}
	r, err := filepath.EvalSymlinks(root)
	if err != nil {
		return fmt.Errorf("%w: backing root: %v", ErrChain, err)
	}
	r, _ = filepath.Abs(r)
	p, err := filepath.EvalSymlinks(name)
	if err != nil {
		// Keep the error about the file itself for a missing file, but
		// never name a file outside the root.
		abs, _ := filepath.Abs(name)
		if !within(r, abs) {
			return withFile(name, fmt.Errorf("%w: outside the backing root %s", ErrChain, root))
		}
		return err
	}
	p, _ = filepath.Abs(p)
	if !within(r, p) {
		return withFile(name, fmt.Errorf("%w: outside the backing root %s", ErrChain, root))
	}
	return nil
}

func within(root, p string) bool {
	rel, err := filepath.Rel(root, filepath.Clean(p))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// ProbeFormat returns "qcow2" when r starts with the qcow2 magic and "raw"
// otherwise, as QEMU's probing does for the formats this package reads.
func ProbeFormat(r io.ReaderAt) string {
	var b [4]byte
	if n, _ := r.ReadAt(b[:], 0); n == 4 && b == [4]byte{'Q', 'F', 'I', 0xfb} {
		return "qcow2"
	}
	return "raw"
}

// OpenLayer opens one image file as a layer of the given format ("" probes).
func OpenLayer(name, format string, opts ChainOptions) (Layer, bool, error) {
	if err := confine(opts.Root, name); err != nil {
		return nil, false, err
	}
	probed := false
	if format == "" {
		f, err := os.Open(name)
		if err != nil {
			return nil, false, err
		}
		format = ProbeFormat(f)
		f.Close()
		probed = true
	}
	switch format {
	case "qcow2":
		f, err := Open(name)
		if err != nil {
			return nil, probed, err
		}
		if opts.Root != "" {
			f.DataFileResolver = func(dn string) (io.ReaderAt, int64, io.Closer, error) {
				if err := confine(opts.Root, dn); err != nil {
					return nil, 0, nil, err
				}
				return openReaderAt(dn)
			}
		}
		return f, probed, nil
	case "raw":
		r, err := OpenRaw(name)
		return r, probed, err
	}
	return nil, probed, withFile(name, fmt.Errorf("%w: image format %q", ErrUnsupported, format))
}

// OpenChain opens name and, unless opts.NoBacking, its backing files down
// to the base. Every file is opened read-only.
func OpenChain(name string, opts ChainOptions) (*Chain, error) {
	c := &Chain{}
	var seen []os.FileInfo
	cur, format := name, opts.Format
	for depth := 0; ; depth++ {
		if depth > MaxChainDepth {
			c.Close()
			return nil, withFile(name, fmt.Errorf("%w: too deep (more than %d layers)", ErrChain, MaxChainDepth))
		}
		st, err := os.Stat(cur)
		if err != nil {
			c.Close()
			if depth > 0 {
				return nil, fmt.Errorf("%s: backing file: %w", c.Layers[depth-1].Filename(), err)
			}
			return nil, err
		}
		for _, s := range seen {
			if os.SameFile(s, st) {
				c.Close()
				return nil, withFile(name, fmt.Errorf("%w: loop: the backing file of %s is %s, already in the chain", ErrChain, c.Layers[depth-1].Filename(), cur))
			}
		}
		seen = append(seen, st)
		l, probed, err := OpenLayer(cur, format, opts)
		if err != nil {
			c.Close()
			if depth > 0 {
				return nil, fmt.Errorf("%s: backing file: %w", c.Layers[depth-1].Filename(), err)
			}
			return nil, err
		}
		c.Layers = append(c.Layers, l)
		c.Probed = append(c.Probed, probed && depth > 0)
		q, ok := l.(*File)
		if ok && !opts.NoBacking && !opts.NoDataFile && q.Header.HasDataFile() {
			// QEMU opens the data file with the image: a missing one is an
			// error now, not at the first read.
			if _, _, err := q.dataReader(); err != nil {
				c.Close()
				return nil, err
			}
		}
		if opts.NoBacking || !ok || q.Header.BackingFile == "" {
			return c, nil
		}
		b := q.Header.BackingFile
		if hasProtocol(b) {
			c.Close()
			return nil, withFile(q.Name, fmt.Errorf("%w: backing file %q uses a protocol; only local files are supported", ErrUnsupported, b))
		}
		cur, format = BackingPath(cur, b), q.Header.BackingFormat
	}
}
