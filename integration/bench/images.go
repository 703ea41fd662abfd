package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const (
	// clusterSize is qemu-img's default cluster size, and the size and
	// alignment of every generated write, so each write fills one whole
	// cluster and never copies from a backing layer.
	clusterSize = 64 << 10
	// generatorVersion is part of every cache key: bump it when the way
	// images are generated changes, so stale caches are not reused.
	generatorVersion = 1
	// genTimeout bounds one qemu-img or qemu-io call while generating.
	genTimeout = 30 * time.Minute
	// markerName is written last into an image folder; a folder without it
	// is an interrupted generation and is made again.
	markerName = "complete.json"
)

// ImageSpec describes a generated image: a chain of Layers qcow2 files of
// VirtualSize bytes, layer i an overlay (-F qcow2) of layer i-1, each with
// Writes random cluster-aligned 64 KiB writes drawn from Seed.
type ImageSpec struct {
	Label       string
	Layers      int
	Writes      int
	VirtualSize uint64
	Seed        uint64
	// Prealloc creates the base with preallocation=metadata: every guest
	// cluster has an L2 entry and a refcount, so check has real work in a
	// sparse file.
	Prealloc bool
	// BaseFill bytes of real data are written at the start of the base
	// (layer 0), in 256 MiB writes.
	BaseFill uint64
	// TopOnly puts the random writes in the top layer only.
	TopOnly bool
}

// Key names the cache folder: every parameter that changes the bytes.
func (s ImageSpec) Key() string {
	k := fmt.Sprintf("%s-v%d-%dx%d-%s-seed%d", s.Label, generatorVersion,
		s.Layers, s.Writes, sizeName(s.VirtualSize), s.Seed)
	if s.Prealloc {
		k += "-prealloc"
	}
	if s.BaseFill > 0 {
		k += "-fill" + sizeName(s.BaseFill)
	}
	if s.TopOnly {
		k += "-toponly"
	}
	return k
}

// Describe says what the image is, for the report.
func (s ImageSpec) Describe() string {
	if s.Layers == 1 {
		pre := ""
		if s.Prealloc {
			pre = ", preallocation=metadata"
		}
		return fmt.Sprintf("%s virtual%s, %d random 64 KiB writes", sizeName(s.VirtualSize), pre, s.Writes)
	}
	return fmt.Sprintf("%d-layer chain, %s virtual, %d random 64 KiB writes per layer",
		s.Layers, sizeName(s.VirtualSize), s.Writes)
}

// Image is a generated (or cached) image and how long making it took.
type Image struct {
	Spec ImageSpec
	Dir  string
	// Top is the absolute path of the last layer, the one the tools open.
	Top       string
	GenTime   time.Duration
	Cached    bool
	HostBytes int64
}

// marker is the content of markerName.
type marker struct {
	Spec      ImageSpec `json:"spec"`
	GenTimeNS int64     `json:"generation_ns"`
	Generated time.Time `json:"generated"`
}

func layerName(i int) string { return fmt.Sprintf("layer%02d.qcow2", i) }

// Prepare returns the image for spec under root, generating it unless a
// complete copy is cached.
func Prepare(root string, spec ImageSpec) (*Image, error) {
	dir := filepath.Join(root, spec.Key())
	img := &Image{Spec: spec, Dir: dir, Top: filepath.Join(dir, layerName(spec.Layers-1))}
	if b, err := os.ReadFile(filepath.Join(dir, markerName)); err == nil {
		var m marker
		if err := json.Unmarshal(b, &m); err == nil && m.Spec == spec {
			img.GenTime, img.Cached = time.Duration(m.GenTimeNS), true
			img.HostBytes = dirBytes(dir)
			return img, nil
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	start := time.Now()
	for i := 0; i < spec.Layers; i++ {
		if err := makeLayer(dir, spec, i); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, layerName(i)), err)
		}
	}
	img.GenTime = time.Since(start)
	b, err := json.MarshalIndent(marker{Spec: spec, GenTimeNS: int64(img.GenTime), Generated: time.Now().UTC()}, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, markerName), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	img.HostBytes = dirBytes(dir)
	return img, nil
}

// makeLayer creates layer i (an overlay of layer i-1 with a relative
// backing name, as a user would) and fills it with one qemu-io run that
// reads its write commands from stdin.
func makeLayer(dir string, spec ImageSpec, i int) error {
	name := layerName(i)
	create := []string{"qemu-img", "create", "-q", "-f", "qcow2"}
	if i > 0 {
		create = append(create, "-b", layerName(i-1), "-F", "qcow2")
	} else if spec.Prealloc {
		create = append(create, "-o", "preallocation=metadata")
	}
	create = append(create, name, fmt.Sprint(spec.VirtualSize))
	if _, err := runIn(dir, nil, create); err != nil {
		return err
	}
	// -t unsafe: qemu-io's default cache mode flushes after every write,
	// which only slows generation; the bytes written are the same.
	_, err := runIn(dir, strings.NewReader(writeScript(spec, i)),
		[]string{"qemu-io", "-f", "qcow2", "-t", "unsafe", name})
	return err
}

// writeScript is the qemu-io command list of layer i: spec.Writes writes
// of one cluster each at random cluster-aligned offsets, with a non-zero
// pattern byte that varies by layer and by write.
func writeScript(spec ImageSpec, layer int) string {
	rng := rand.New(rand.NewPCG(spec.Seed, uint64(layer)))
	slots := spec.VirtualSize / clusterSize
	var b strings.Builder
	if layer == 0 {
		for off := uint64(0); off < spec.BaseFill; off += 256 << 20 {
			fmt.Fprintf(&b, "write -q -P 90 %d %d\n", off, min(256<<20, spec.BaseFill-off))
		}
	}
	if spec.TopOnly && layer != spec.Layers-1 {
		return b.String()
	}
	for j := 0; j < spec.Writes; j++ {
		off := rng.Uint64N(slots) * clusterSize
		pattern := 1 + (layer*31+j)%255
		fmt.Fprintf(&b, "write -q -P %d %d 64k\n", pattern, off)
	}
	return b.String()
}

// runIn runs argv in dir with stdin, and fails on a non-zero exit status
// or on any output other than qemu-io's prompts (write -q prints nothing
// when it succeeds).
func runIn(dir string, stdin *strings.Reader, argv []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), genTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	if stdin != nil {
		cmd.Stdin = stdin
	}
	out, err := cmd.CombinedOutput()
	rest := strings.TrimSpace(strings.ReplaceAll(string(out), "qemu-io>", ""))
	if err == nil && rest != "" {
		err = errors.New("unexpected output")
	}
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, firstLines(rest, 5))
	}
	return out, nil
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, " | ")
}

// dirBytes is the total size of the image files.
func dirBytes(dir string) int64 {
	var n int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".qcow2") {
			n += fi.Size()
		}
	}
	return n
}

func sizeName(n uint64) string {
	switch {
	case n >= 1<<40 && n%(1<<40) == 0:
		return fmt.Sprintf("%dT", n>>40)
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	}
	return fmt.Sprint(n)
}
