package qcow2

import (
	"errors"
	"fmt"
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

func withFile(name string, err error) error {
	if err == nil {
		return nil
	}
	var fe *fileError
	if errors.As(err, &fe) {
		return err
	}
	return &fileError{Name: name, Err: err}
}
