package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func snapshotFlag() cli.Flag {
	return &cli.StringFlag{Name: "snapshot", Aliases: []string{"l"}, Usage: "read the internal snapshot `ID|NAME` of the top image instead of its current state"}
}

// openChainAt opens a chain and switches its top to an internal snapshot
// when --snapshot (or the named flag) is set.
func openChainAt(c *cli.Context, name, snapFlag string) (*qcow2.Chain, func(), error) {
	chain, err := openChain(c, name, false)
	if err != nil {
		return nil, nil, err
	}
	closeFn := func() { chain.Close() }
	if key := c.String(snapFlag); key != "" {
		view, err := chain.WithSnapshot(key)
		if err != nil {
			closeFn()
			return nil, nil, err
		}
		return view, closeFn, nil
	}
	return chain, closeFn, nil
}

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

// listWriter streams a JSON array one item at a time.
type listWriter struct {
	w     io.Writer
	json  bool
	count int
}

func newListWriter(w io.Writer, asJSON bool) *listWriter { return &listWriter{w: w, json: asJSON} }

func (l *listWriter) item(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	sep := ",\n"
	if l.count == 0 {
		sep = "[\n"
	}
	l.count++
	_, err = fmt.Fprintf(l.w, "%s%s", sep, b)
	return err
}

func (l *listWriter) close() error {
	if !l.json {
		return nil
	}
	if l.count == 0 {
		_, err := fmt.Fprintln(l.w, "[]")
		return err
	}
	_, err := fmt.Fprintln(l.w, "\n]")
	return err
}

// abort ends the output after an error so what was printed stays readable.
func (l *listWriter) abort() {
	if l.json && l.count > 0 {
		fmt.Fprintln(l.w, "\n]")
	}
}

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
