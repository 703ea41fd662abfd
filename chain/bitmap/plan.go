package bitmap

import (
	"fmt"
	"sort"
	"strings"
)

// ActionKind is one of qemu-img bitmap's actions.
type ActionKind string

// The actions, named as qemu-img bitmap's flags.
const (
	Add     ActionKind = "add"
	Remove  ActionKind = "remove"
	Clear   ActionKind = "clear"
	Enable  ActionKind = "enable"
	Disable ActionKind = "disable"
	Merge   ActionKind = "merge"
)

// Limits QEMU applies to a persistent bitmap (block/qcow2-bitmap.c,
// block/dirty-bitmap.c).
const (
	// MaxNameLen is the longest bitmap name a qcow2 image stores, in bytes.
	MaxNameLen = 1023
	// MinGranularity and MaxGranularity bound the bytes one bit covers.
	MinGranularity = 512
	MaxGranularity = 1 << 31
)

// Action is one action on the request's bitmap.
type Action struct {
	Kind ActionKind
	// Source is the bitmap whose bits a Merge sets in the request's
	// bitmap: one of the image's own, or of Request.SourceFile.
	Source string
}

func (a Action) String() string {
	if a.Kind == Merge {
		return "--merge " + a.Source
	}
	return "--" + string(a.Kind)
}

// Request is what one qemu-img bitmap call asks: actions on one bitmap,
// run in order.
type Request struct {
	// Bitmap is the name of the bitmap every action applies to.
	Bitmap string
	// Actions run in the order given; at least one is needed.
	Actions []Action
	// Granularity is the bytes one bit of an added bitmap covers, a power
	// of two from 512 to 2 GiB. Zero is QEMU's default (the cluster size,
	// kept between 4 KiB and 64 KiB). Only with an Add.
	Granularity uint64
	// Disabled makes Add create a bitmap that does not record writes
	// until enabled (QMP's "disabled"; qemu-img spells it --add
	// --disable). Only with an Add.
	Disabled bool
	// SourceFile holds the sources of every Merge (qemu-img's -b): offline
	// an image file, live a disk of the VM, or a layer of a disk's chain
	// (a file or a node name). Empty means the image itself.
	SourceFile string
	// SourceFormat is the format of SourceFile (qemu-img's -F); only
	// qcow2 holds bitmaps. Empty probes it.
	SourceFormat string
}

// has reports whether the request has an action of kind k.
func (r *Request) has(k ActionKind) bool {
	for _, a := range r.Actions {
		if a.Kind == k {
			return true
		}
	}
	return false
}

// Validate checks the request on its own, before any image is looked at,
// with the rules of qemu-img bitmap's option parsing and of QEMU's
// block-dirty-bitmap-add.
func (r *Request) Validate() error {
	switch {
	case len(r.Actions) == 0:
		return fmt.Errorf("need at least one of --add, --remove, --clear, --enable, --disable or --merge")
	case r.Granularity != 0 && !r.has(Add):
		return fmt.Errorf("a granularity (-g) applies only to --add")
	case r.Disabled && !r.has(Add):
		return fmt.Errorf("--disabled applies only to --add")
	case r.SourceFile != "" && !r.has(Merge):
		return fmt.Errorf("a source file (-b) applies only to --merge")
	case r.SourceFormat != "" && r.SourceFile == "":
		return fmt.Errorf("a source format (-F) applies only with a source file (-b)")
	case r.Bitmap == "":
		return fmt.Errorf("the bitmap name is empty")
	case len(r.Bitmap) > MaxNameLen:
		return fmt.Errorf("the bitmap name is %d bytes long; qcow2 stores at most %d", len(r.Bitmap), MaxNameLen)
	case r.Granularity != 0 && (r.Granularity < MinGranularity || r.Granularity > MaxGranularity || r.Granularity&(r.Granularity-1) != 0):
		return fmt.Errorf("granularity %d is not a power of two from 512 to 2 GiB", r.Granularity)
	}
	for _, a := range r.Actions {
		switch a.Kind {
		case Add, Remove, Clear, Enable, Disable:
		case Merge:
			if a.Source == "" {
				return fmt.Errorf("--merge needs the name of a source bitmap")
			}
		default:
			return fmt.Errorf("unknown bitmap action %q", a.Kind)
		}
	}
	return nil
}

// State is a bitmap as observed in an image or a running QEMU.
type State struct {
	Name        string
	Granularity uint64
	// Enabled bitmaps record writes (the "auto" flag in the image).
	Enabled bool
	// Inconsistent bitmaps were not stored cleanly (the in-use flag of an
	// image nobody has open): QEMU only lets them be removed.
	Inconsistent bool
	// Busy bitmaps are used by a job of a running QEMU.
	Busy bool
}

// Plan is a checked request: the actions cut into the transactions that
// run them, and the bitmap expected afterwards.
type Plan struct {
	Request Request
	// Transactions are run one after another, each as one QMP
	// transaction: all its actions take effect or none does. A request is
	// cut only where QEMU's transactions cannot follow qemu-img's order:
	// a bitmap removed in a transaction is released only when it
	// commits, so an --add of the same name after a --remove starts a new
	// one.
	Transactions [][]Action
	// Final is the request's bitmap after the plan; nil when it ends
	// removed.
	Final *State
}

// NewPlan checks req against the bitmaps an image holds (image) and,
// when req.SourceFile is set, those of the source (source), by running
// the actions in order on a copy of the states: an action on a bitmap
// that does not exist at that point, an add of one that does, or a use of
// an inconsistent one is refused before anything is changed.
// defaultGranularity is what an Add without a granularity gets.
func NewPlan(req Request, image, source []State, defaultGranularity uint64) (*Plan, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	states := make(map[string]State, len(image))
	for _, s := range image {
		states[s.Name] = s
	}
	sources := states
	if req.SourceFile != "" {
		sources = make(map[string]State, len(source))
		for _, s := range source {
			sources[s.Name] = s
		}
	}
	p := &Plan{Request: req}
	var cur []Action
	removed := false // the current transaction removes the bitmap
	name := req.Bitmap
	for _, a := range req.Actions {
		s, exists := states[name]
		if exists && a.Kind != Add && a.Kind != Remove && s.Inconsistent {
			return nil, fmt.Errorf("%s: bitmap %s is inconsistent (QEMU did not store it cleanly): it can only be removed (--remove)", a, name)
		}
		switch a.Kind {
		case Add:
			if exists {
				return nil, fmt.Errorf("--add: bitmap %s already exists", name)
			}
			if removed {
				p.Transactions = append(p.Transactions, cur)
				cur, removed = nil, false
			}
			g := req.Granularity
			if g == 0 {
				g = defaultGranularity
			}
			states[name] = State{Name: name, Granularity: g, Enabled: !req.Disabled}
		case Remove:
			if !exists {
				return nil, missing(a, name, "", states)
			}
			delete(states, name)
			removed = true
		case Clear:
			if !exists {
				return nil, missing(a, name, "", states)
			}
		case Enable, Disable:
			if !exists {
				return nil, missing(a, name, "", states)
			}
			s.Enabled = a.Kind == Enable
			states[name] = s
		case Merge:
			if !exists {
				return nil, missing(a, name, "", states)
			}
			src, ok := sources[a.Source]
			if !ok {
				return nil, missing(a, a.Source, req.SourceFile, sources)
			}
			if src.Inconsistent {
				return nil, fmt.Errorf("%s: the source bitmap %s is inconsistent (QEMU did not store it cleanly)", a, a.Source)
			}
		}
		cur = append(cur, a)
	}
	p.Transactions = append(p.Transactions, cur)
	if s, ok := states[name]; ok {
		p.Final = &s
	}
	return p, nil
}

// maxNamesListed bounds the names an error lists (an image may hold
// 65535 bitmaps).
const maxNamesListed = 10

// missing is the error of an action on a bitmap that does not exist; in
// names the source file when it is not the image.
func missing(a Action, name, in string, states map[string]State) error {
	where := ""
	if in != "" {
		where = " in " + in
	}
	var names []string
	for n := range states {
		names = append(names, n)
	}
	sort.Strings(names)
	known := "there are no bitmaps" + where
	if len(names) > maxNamesListed {
		names = append(names[:maxNamesListed], fmt.Sprintf("and %d more", len(names)-maxNamesListed))
	}
	if len(names) > 0 {
		known = "bitmaps" + where + ": " + strings.Join(names, ", ")
	}
	return fmt.Errorf("%s: no bitmap %s%s (%s)", a, name, where, known)
}

// DefaultGranularity is the granularity QEMU gives a bitmap added without
// one on an image with clusterSize-byte clusters
// (bdrv_get_default_bitmap_granularity).
func DefaultGranularity(clusterSize uint64) uint64 {
	return min(max(clusterSize, 4096), 65536)
}
