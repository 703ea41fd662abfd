package cli

import (
	"bufio"
	"fmt"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func clustersCommand() *cli.Command {
	return &cli.Command{
		Name:      "clusters",
		Usage:     "guest runs with the layer, host offset and kind (data, zero, compressed, subclusters) that back them",
		ArgsUsage: "IMAGE",
		Flags: append(chainFlags(), outputFlag(), snapshotFlag(),
			&cli.IntFlag{Name: "layer", Value: -1, Usage: "show layer `N` alone (0 = top), unallocated runs included"},
			sizeFlag("start-offset", "first guest byte (suffixes k, M, G, T)"),
			sizeFlag("max-length", "at most `N` bytes"),
		),
		Action: func(c *cli.Context) error {
			name, asJSON, err := imageAndOutput(c)
			if err != nil {
				return err
			}
			chain, done, err := openChainAt(c, name, "snapshot")
			if err != nil {
				return err
			}
			defer done()
			layer := c.Int("layer")
			if layer >= len(chain.Layers) {
				return fmt.Errorf("%s: --layer %d: the chain has %d layers (0 to %d)", name, layer, len(chain.Layers), len(chain.Layers)-1)
			}
			length := ^uint64(0)
			if n, ok := sizeOf(c, "max-length"); ok {
				length = n
			}
			start, _ := sizeOf(c, "start-offset")
			bw := bufio.NewWriterSize(c.App.Writer, 256<<10)
			defer bw.Flush()
			lw := newListWriter(bw, asJSON)
			if !asJSON {
				fmt.Fprintf(bw, "%-16s%-16s%-7s%-18s%-16s%s\n", "Offset", "Length", "Layer", "Type", "Host offset", "File / details")
			}
			err = chain.Clusters(start, length, layer, func(r *qcow2.ClusterRun) error {
				if asJSON {
					return lw.item(r)
				}
				host, detail := "-", r.Filename
				if r.HostOffset != nil {
					host = cHex(*r.HostOffset)
				}
				if r.CompressedOffset != nil {
					host = cHex(*r.CompressedOffset)
					detail += fmt.Sprintf(" (compressed, %d bytes)", *r.CompressedSize)
				}
				if r.SubclusterBitmap != nil {
					detail += fmt.Sprintf(" (subclusters %#016x)", *r.SubclusterBitmap)
				}
				depth := "-"
				if r.Depth >= 0 {
					depth = fmt.Sprint(r.Depth)
				}
				_, err := fmt.Fprintf(bw, "%-16s%-16s%-7s%-18s%-16s%s\n", cHex(r.Start), cHex(r.Length), depth, r.Type, host, detail)
				return err
			})
			if err != nil {
				lw.abort()
				return err
			}
			return lw.close()
		},
	}
}

func cHex(v uint64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}
