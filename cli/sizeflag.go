package cli

import (
	"fmt"
	"strconv"
	"strings"

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

// ParseSize reads a size as qemu-img does: a number with an optional
// suffix b, k/K, M, G, T, P, E (powers of 1024).
func ParseSize(s string) (uint64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	mult := uint64(1)
	switch s[len(s)-1] {
	case 'b', 'B':
		s = s[:len(s)-1]
	case 'k', 'K':
		mult, s = 1<<10, s[:len(s)-1]
	case 'm', 'M':
		mult, s = 1<<20, s[:len(s)-1]
	case 'g', 'G':
		mult, s = 1<<30, s[:len(s)-1]
	case 't', 'T':
		mult, s = 1<<40, s[:len(s)-1]
	case 'p', 'P':
		mult, s = 1<<50, s[:len(s)-1]
	case 'e', 'E':
		mult, s = 1<<60, s[:len(s)-1]
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && strings.ContainsAny(s, ".") {
		if f < 0 || f*float64(mult) >= 1<<63 {
			return 0, fmt.Errorf("size %q out of range", s)
		}
		return uint64(f * float64(mult)), nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("size %q out of range", s)
	}
	return n * mult, nil
}
