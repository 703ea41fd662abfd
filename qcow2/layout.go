package qcow2

import (
	"fmt"
)

// Layout names the qemu-img release whose output the info and map printers
// reproduce: which keys their JSON has and how their human text looks.
// Releases differ in layout only, never in the values they report.
type Layout int

const (
	// LayoutQemu10 is qemu-img 10.0's layout, the zero value: info lists
	// each image's protocol node under "children" (and as "Child node
	// '/file':" in human text), map marks every extent "compressed" or
	// not, and the snapshot table has 10.0's columns.
	LayoutQemu10 Layout = iota
	// LayoutQemu72 is qemu-img 7.2's layout: no children, no compressed
	// key, the older snapshot table.
	LayoutQemu72
)

// Layouts are the accepted spellings of ParseLayout, for messages.
const Layouts = "7.2 or 10.0"

// ParseLayout returns the layout of a qemu-img release as written on a
// command line: "10.0" (or "10") and "7.2".
func ParseLayout(s string) (Layout, error) {
	switch s {
	case "10.0", "10":
		return LayoutQemu10, nil
	case "7.2":
		return LayoutQemu72, nil
	}
	return 0, fmt.Errorf("unknown qemu-img layout %q: accepted values are %s", s, Layouts)
}

// String returns the release the layout follows, as ParseLayout reads it.
func (l Layout) String() string {
	switch l {
	case LayoutQemu10:
		return "10.0"
	case LayoutQemu72:
		return "7.2"
	}
	return fmt.Sprintf("Layout(%d)", int(l))
}

// OutputOptions controls the printers that reproduce qemu-img's output
// (ChainInfo, WriteInfoHuman, WriteMapJSON). The zero value prints
// qemu-img 10.0's layout.
type OutputOptions struct {
	// Layout is the qemu-img release whose layout is printed; the zero
	// value is LayoutQemu10.
	Layout Layout
}
