package qcow2

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors callers can branch on with errors.Is.
var (
	// ErrNotQcow2 reports a file that does not start with the qcow2 magic.
	ErrNotQcow2 = errors.New("qcow2: not a qcow2 image")
	// ErrUnsupported reports a valid image that uses something this package
	// cannot read (an unknown incompatible feature, encryption).
	ErrUnsupported = errors.New("qcow2: unsupported")
	// ErrCorrupt wraps every *FormatError.
	ErrCorrupt = errors.New("qcow2: corrupt image")
	// ErrChain reports a backing chain that cannot be followed: a loop, a
	// chain deeper than MaxChainDepth, or a file outside ChainOptions.Root.
	ErrChain = errors.New("qcow2: bad backing chain")
)

// FormatError reports malformed on-disk data at a file offset.
type FormatError struct {
	Off int64  // file offset of the offending structure, -1 if unknown
	Msg string // what is wrong, in the spec's words
}

func (e *FormatError) Error() string {
	if e.Off < 0 {
		return e.Msg
	}
	return fmt.Sprintf("%s (at offset %#x)", e.Msg, e.Off)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true for every FormatError.
func (e *FormatError) Unwrap() error { return ErrCorrupt }

func formatErr(off int64, format string, args ...any) error {
	return &FormatError{Off: off, Msg: fmt.Sprintf(format, args...)}
}

// fileError prefixes err with the file name once.
type fileError struct {
	Name string
	Err  error
}

func (e *fileError) Error() string { return e.Name + ": " + e.Err.Error() }
func (e *fileError) Unwrap() error { return e.Err }

// withFile prefixes err with the file name, unless it has no name (a File
// made by NewFile) or err already names a file: a message names each file
// once, in front.
func withFile(name string, err error) error {
	if err == nil || name == "" {
		return err
	}
	var fe *fileError
	if errors.As(err, &fe) || strings.HasPrefix(err.Error(), name+": ") {
		return err
	}
	return &fileError{Name: name, Err: err}
}

// WithFile prefixes err with the file name as this package's errors are:
// unchanged when err is nil, name is empty or err already starts with a
// file name this package put there (or with name itself).
func WithFile(name string, err error) error { return withFile(name, err) }
