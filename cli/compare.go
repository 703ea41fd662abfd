package cli

import (
	"fmt"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func compareCommand() *cli.Command {
	return &cli.Command{
		Name:      "compare",
		Usage:     "compare the guest content of two images, as qemu-img compare",
		ArgsUsage: "A B",
		Description: "Exit status as qemu-img: 0 identical, 1 different, 2 an image could not be read.\n" +
			"Images of different sizes are identical when the extra area reads as zeros, unless -s.",
		Flags: append(chainFlags(),
			&cli.BoolFlag{Name: "strict", Aliases: []string{"s"}, Usage: "strict mode: fail on different sizes or allocation, as qemu-img -s"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print nothing, only set the exit status"},
		),
		Action: runCompare,
	}
}

func runCompare(c *cli.Context) error {
	if c.NArg() != 2 {
		return exitCode(2, fmt.Errorf("compare: expected two images A B, got %d arguments", c.NArg()))
	}
	a, err := openChain(c, c.Args().Get(0), false)
	if err != nil {
		return exitCode(2, err)
	}
	defer a.Close()
	b, err := openChain(c, c.Args().Get(1), false)
	if err != nil {
		return exitCode(2, err)
	}
	defer b.Close()
	res, err := qcow2.Compare(a, b, c.Bool("strict"))
	if err != nil {
		return exitCode(2, err)
	}
	say := func(s string) {
		if !c.Bool("quiet") {
			fmt.Fprintln(c.App.Writer, s)
		}
	}
	if res.SizeMismatch && !c.Bool("strict") {
		say("Warning: Image size mismatch!")
	}
	if !res.Identical {
		say(res.Reason)
		return exitCode(1, nil)
	}
	say("Images are identical.")
	return nil
}
