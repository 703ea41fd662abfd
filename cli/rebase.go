package cli

import (
	"fmt"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

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
