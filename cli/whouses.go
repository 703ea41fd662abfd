package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func whoUsesCommand() *cli.Command {
	return &cli.Command{
		Name:      "who-uses",
		Usage:     "every image under the folders whose backing chain includes FILE",
		ArgsUsage: "FILE",
		Flags: []cli.Flag{outputFlag(),
			&cli.StringSliceFlag{Name: "search", Usage: "folder `DIR` to search (repeat for several)", Required: true}},
		Action: func(c *cli.Context) error {
			name, asJSON, err := imageAndOutput(c)
			if err != nil {
				return err
			}
			var deps []qcow2.Dependant
			if err := qcow2.WhoUses(name, c.StringSlice("search"), func(d qcow2.Dependant) error {
				deps = append(deps, d)
				return nil
			}); err != nil {
				return err
			}
			if asJSON {
				if deps == nil {
					deps = []qcow2.Dependant{}
				}
				return writeJSON(c.App.Writer, deps)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "DEPTH\tIMAGE")
			for _, d := range deps {
				fmt.Fprintf(tw, "%d\t%s\n", d.Depth, d.Image)
			}
			return tw.Flush()
		},
	}
}
