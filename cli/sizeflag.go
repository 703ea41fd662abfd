package cli

import (
	"strconv"

	"github.com/urfave/cli/v2"
)

// sizeValue is a flag value in bytes that takes qemu-img's size suffixes.
type sizeValue struct {
	n   uint64
	set bool
}

func (s *sizeValue) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	s.n, s.set = n, true
	return nil
}

func (s *sizeValue) String() string {
	if s == nil || !s.set {
		return ""
	}
	return strconv.FormatUint(s.n, 10)
}

// sizeFlag is a byte-count flag accepting 4096, 64k, 1.5G, ...
func sizeFlag(name, usage string) cli.Flag {
	return &cli.GenericFlag{Name: name, Value: &sizeValue{}, Usage: usage}
}

// sizeOf returns a sizeFlag's value and whether it was given.
func sizeOf(c *cli.Context, name string) (uint64, bool) {
	v, ok := c.Generic(name).(*sizeValue)
	if !ok || v == nil {
		return 0, false
	}
	return v.n, v.set
}

// usageError keeps usage errors to one line (urfave prints the whole help
// otherwise).
func usageError(c *cli.Context, err error, _ bool) error {
	return err
}
