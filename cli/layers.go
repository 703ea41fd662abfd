package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"
)

func layersCommand() *cli.Command {
	return &cli.Command{
		Name:      "layers",
		Usage:     "per layer of a chain: what it allocates, what the top still sees of it, what a commit or pull would copy",
		ArgsUsage: "IMAGE",
		Flags:     append(chainFlags(), outputFlag()),
		Action: func(c *cli.Context) error {
			name, asJSON, err := imageAndOutput(c)
			if err != nil {
				return err
			}
			chain, err := openChain(c, name, false)
			if err != nil {
				return err
			}
			defer chain.Close()
			stats, err := chain.Stats()
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.App.Writer, stats)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "DEPTH\tFILE\tFORMAT\tCLUSTER\tALLOCATED\tDATA\tZERO\tCOMPRESSED\tVISIBLE\tSHADOWED\tCOMMIT COPIES\tPULL COPIES")
			for _, s := range stats {
				cl := "-"
				if s.ClusterSize != 0 {
					cl = humanize.IBytes(s.ClusterSize)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Depth, s.Filename, s.Format, cl,
					humanize.IBytes(s.AllocatedBytes), humanize.IBytes(s.DataBytes), humanize.IBytes(s.ZeroBytes),
					humanize.IBytes(s.CompressedBytes), humanize.IBytes(s.VisibleBytes), humanize.IBytes(s.ShadowedBytes),
					dash(s.CommitBytes, s.Depth == len(stats)-1), dash(s.PullBytes, s.Depth == 0))
			}
			return tw.Flush()
		},
	}
}

func dash(n uint64, none bool) string {
	if none {
		return "-"
	}
	return humanize.IBytes(n)
}
