package cli

import (
	"bufio"
	"fmt"

	"github.com/dustin/go-humanize"
	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func diffCommand() *cli.Command {
	return &cli.Command{
		Name:      "diff",
		Usage:     "guest ranges whose content differs between two images or chains (a changed-block list)",
		ArgsUsage: "A B",
		Description: "Ranges both sides read from the same host cluster of a shared layer, or both read as\n" +
			"zeros, are equal without reading data; the rest is compared. Exit status: 0 no\n" +
			"difference, 1 differences listed, 2 an image could not be read.",
		Flags: append(chainFlags(), outputFlag(), snapshotFlag(),
			&cli.StringFlag{Name: "snapshot-b", Usage: "read the internal snapshot `ID|NAME` of B's top image"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return exitCode(2, fmt.Errorf("diff: expected two images A B, got %d arguments", c.NArg()))
			}
			asJSON, err := outputJSON(c)
			if err != nil {
				return exitCode(2, err)
			}
			a, doneA, err := openChainAt(c, c.Args().Get(0), "snapshot")
			if err != nil {
				return exitCode(2, err)
			}
			defer doneA()
			b, doneB, err := openChainAt(c, c.Args().Get(1), "snapshot-b")
			if err != nil {
				return exitCode(2, err)
			}
			defer doneB()
			bw := bufio.NewWriterSize(c.App.Writer, 256<<10)
			defer bw.Flush()
			if asJSON {
				fmt.Fprint(bw, `{"ranges": [`)
			} else {
				fmt.Fprintf(bw, "%-20s%s\n", "Offset", "Length")
			}
			n := 0
			st, err := qcow2.Diff(a, b, func(r qcow2.DiffRange) error {
				var err error
				if asJSON {
					sep := ",\n  "
					if n == 0 {
						sep = "\n  "
					}
					_, err = fmt.Fprintf(bw, `%s{"start": %d, "length": %d}`, sep, r.Start, r.Length)
				} else {
					_, err = fmt.Fprintf(bw, "%-20d%d\n", r.Start, r.Length)
				}
				n++
				return err
			})
			if err != nil {
				bw.Flush()
				return exitCode(2, err)
			}
			if asJSON {
				fmt.Fprintf(bw, "\n], \"shared-bytes\": %d, \"compared-bytes\": %d, \"different-bytes\": %d}\n", st.SharedBytes, st.ComparedBytes, st.DifferentBytes)
			} else {
				fmt.Fprintf(bw, "%d ranges, %s different; %s equal by metadata, %s compared\n", n,
					humanize.IBytes(st.DifferentBytes), humanize.IBytes(st.SharedBytes), humanize.IBytes(st.ComparedBytes))
			}
			if n > 0 {
				return exitCode(1, nil)
			}
			return nil
		},
	}
}
