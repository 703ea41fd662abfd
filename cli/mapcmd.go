package cli

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func mapCommand() *cli.Command {
	return &cli.Command{
		Name:      "map",
		Usage:     "show which layer and host offset backs each guest range, as qemu-img map",
		ArgsUsage: "IMAGE",
		Flags: append(chainFlags(), outputFlag(), snapshotFlag(),
			&cli.Uint64Flag{Name: "start-offset", Usage: "first guest byte to map"},
			&cli.Uint64Flag{Name: "max-length", Usage: "map at most `N` bytes"},
		),
		Action: runMap,
	}
}

func runMap(c *cli.Context) error {
	name, err := oneImage(c)
	if err != nil {
		return err
	}
	asJSON, err := outputJSON(c)
	if err != nil {
		return err
	}
	chain, done, err := openChainAt(c, name, "snapshot")
	if err != nil {
		return err
	}
	defer done()
	length := ^uint64(0)
	if c.IsSet("max-length") {
		length = c.Uint64("max-length")
	}
	if asJSON {
		return chain.WriteMapJSON(c.App.Writer, c.Uint64("start-offset"), length)
	}
	if err := chain.WriteMapHuman(c.App.Writer, c.Uint64("start-offset"), length); err != nil {
		return fmt.Errorf("%s: %w (use --output=json)", name, err)
	}
	return nil
}
