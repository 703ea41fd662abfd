package cli

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/dustin/go-humanize"
	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func leaksCommand() *cli.Command {
	return &cli.Command{
		Name:      "leaks",
		Usage:     "host clusters nothing references: leaked (refcount set) and unreferenced (freed, may hold old data)",
		ArgsUsage: "IMAGE",
		Flags: append(chainFlags(), outputFlag(),
			&cli.StringFlag{Name: "extract", Usage: "write each run's bytes to `DIR`/<offset>.bin"}),
		Action: func(c *cli.Context) error {
			name, asJSON, err := imageAndOutput(c)
			if err != nil {
				return err
			}
			chain, err := openChain(c, name, true)
			if err != nil {
				return err
			}
			defer chain.Close()
			f, ok := chain.Top().(*qcow2.File)
			if !ok {
				return fmt.Errorf("%s: %s images have no refcounts", name, chain.Top().Format())
			}
			dir := c.String("extract")
			if dir != "" {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					return err
				}
			}
			bw := bufio.NewWriter(c.App.Writer)
			defer bw.Flush()
			lw := newListWriter(bw, asJSON)
			if !asJSON {
				fmt.Fprintf(bw, "%-16s%-16s%-14s%-10s%s\n", "Offset", "Length", "Kind", "Refcount", "Content")
			}
			var total, nonZero uint64
			err = f.Leaks(func(r qcow2.LeakRun) error {
				total += r.Length
				nonZero += r.NonZeroClusters * f.ClusterSize()
				if dir != "" {
					if err := extractRun(f, dir, r); err != nil {
						return err
					}
				}
				if asJSON {
					return lw.item(r)
				}
				content := "zeros"
				if r.NonZero {
					content = fmt.Sprintf("non-zero (%d clusters)", r.NonZeroClusters)
				}
				_, err := fmt.Fprintf(bw, "%-16s%-16s%-14s%-10d%s\n", cHex(r.Offset), cHex(r.Length), r.Kind, r.Refcount, content)
				return err
			})
			if err != nil {
				lw.abort()
				return err
			}
			if !asJSON {
				fmt.Fprintf(bw, "%s unreferenced in total, %s of it non-zero\n", humanize.IBytes(total), humanize.IBytes(nonZero))
			}
			return lw.close()
		},
	}
}

// extractRun copies a run of host bytes of f into dir/<offset>.bin.
func extractRun(f *qcow2.File, dir string, r qcow2.LeakRun) error {
	out, err := os.Create(filepath.Join(dir, fmt.Sprintf("%#x.bin", r.Offset)))
	if err != nil {
		return err
	}
	length := min(int64(r.Length), f.HostSize()-int64(r.Offset))
	if _, err := io.Copy(out, io.NewSectionReader(f.ReaderAt(), int64(r.Offset), length)); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
