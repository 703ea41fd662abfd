package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func createCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "create an empty qcow2 image or overlay natively, laid out as qemu-img creates it",
		ArgsUsage: "IMAGE [SIZE]",
		Description: "SIZE takes qemu-img's suffixes (k, M, G, T: powers of 1024) and defaults to the\n" +
			"backing file's size. An existing IMAGE is never overwritten.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "b", Aliases: []string{"backing"}, Usage: "backing `FILE` (recorded as given; relative to IMAGE's folder)"},
			&cli.StringFlag{Name: "F", Aliases: []string{"backing-format"}, Usage: "backing file `FORMAT` (qcow2 or raw); probed and recorded when empty"},
			&cli.StringFlag{Name: "o", Usage: "options, as qemu-img: `cluster_size=N`"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 || c.NArg() > 2 {
				return fmt.Errorf("create: expected IMAGE [SIZE], got %d arguments", c.NArg())
			}
			opts := qcow2.CreateOptions{BackingFile: c.String("b"), BackingFormat: c.String("F")}
			if c.NArg() == 2 {
				n, err := ParseSize(c.Args().Get(1))
				if err != nil {
					return err
				}
				opts.Size = n
			}
			if o := c.String("o"); o != "" {
				for _, kv := range strings.Split(o, ",") {
					k, v, _ := strings.Cut(kv, "=")
					switch k {
					case "cluster_size":
						n, err := ParseSize(v)
						if err != nil {
							return err
						}
						opts.ClusterSize = n
					default:
						return fmt.Errorf("create: unsupported option %q (supported: cluster_size)", k)
					}
				}
			}
			return qcow2.Create(c.Args().Get(0), opts)
		},
	}
}

func rebaseCommand() *cli.Command {
	return &cli.Command{
		Name:      "rebase",
		Usage:     "rewrite the backing file name an image records, without copying data (qemu-img rebase -u)",
		ArgsUsage: "IMAGE",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "u", Usage: "unsafe mode: only rewrite the name (the only mode qchain offers; required)"},
			&cli.StringFlag{Name: "b", Aliases: []string{"backing"}, Usage: "new backing `FILE` (empty: the image gets no backing file)"},
			&cli.StringFlag{Name: "F", Aliases: []string{"backing-format"}, Usage: "backing file `FORMAT`; probed when empty"},
		},
		Action: func(c *cli.Context) error {
			name, err := oneImage(c)
			if err != nil {
				return err
			}
			if !c.Bool("u") {
				return fmt.Errorf("rebase: only -u (rewrite the name, copy nothing) is supported; a safe rebase runs as a block job (blockpull)")
			}
			return qcow2.Rebase(name, c.String("b"), c.String("F"))
		},
	}
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
