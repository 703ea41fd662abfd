package cli

import (
	"fmt"
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
