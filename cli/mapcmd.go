package cli

import (
	"errors"
	"fmt"

	"github.com/qchain/qchain/qcow2"

	"github.com/urfave/cli/v2"
)

func mapCommand() *cli.Command {
	return &cli.Command{
		Name:        "map",
		Usage:       "show which layer and host offset backs each guest range, as qemu-img map",
		ArgsUsage:   "IMAGE",
		Description: compatDescription,
		Flags: append(chainFlags(), outputFlag(), compatFlag(), snapshotFlag(),
			sizeFlag("start-offset", "first guest byte to map (suffixes k, M, G, T)"),
			sizeFlag("max-length", "map at most `N` bytes"),
		),
		Action: runMap,
	}
}

func runMap(c *cli.Context) error {
	name, asJSON, err := imageAndOutput(c)
	if err != nil {
		return err
	}
	out, err := outputOptions(c)
	if err != nil {
		return err
	}
	chain, done, err := openChainAt(c, name, "snapshot")
	if err != nil {
		return err
	}
	defer done()
	length := ^uint64(0)
	if n, ok := sizeOf(c, "max-length"); ok {
		length = n
	}
	start, _ := sizeOf(c, "start-offset")
	if asJSON {
		return chain.WriteMapJSON(c.App.Writer, start, length, out)
	}
	err = chain.WriteMapHuman(c.App.Writer, start, length)
	if errors.Is(err, qcow2.ErrMapHuman) {
		// qemu-img's human layout has no column for such data; JSON has.
		return fmt.Errorf("%s: %w (use --output=json)", name, err)
	}
	return qcow2.WithFile(name, err)
}
