package cli

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func dumpCommand() *cli.Command {
	return &cli.Command{
		Name:      "dump",
		Usage:     "the on-disk structures of one qcow2 file as decoded, with offsets (no chain)",
		ArgsUsage: "IMAGE",
		Flags: []cli.Flag{outputFlag(),
			&cli.BoolFlag{Name: "header", Usage: "the header (the default)"},
			&cli.BoolFlag{Name: "extensions", Usage: "header extensions"},
			&cli.BoolFlag{Name: "l1", Usage: "non-zero entries of the active L1 table"},
			&cli.Int64Flag{Name: "l2", Value: -1, Usage: "non-zero entries of the L2 table of L1 entry `INDEX`"},
			&cli.BoolFlag{Name: "refcounts", Usage: "runs of host clusters by refcount"},
			&cli.BoolFlag{Name: "snapshots", Usage: "the internal snapshot table"},
			&cli.BoolFlag{Name: "bitmaps", Usage: "the persistent bitmap directory"},
		},
		Action: runDump,
	}
}

func runDump(c *cli.Context) error {
	name, asJSON, err := imageAndOutput(c)
	if err != nil {
		return err
	}
	w := c.App.Writer
	f, err := qcow2.Open(name)
	if err != nil {
		// Forensics: show what can be decoded of a header that does not open.
		raw, rerr := os.Open(name)
		if rerr != nil {
			return err
		}
		defer raw.Close()
		h, herr := qcow2.ReadRawHeader(raw)
		if herr != nil || !(c.Bool("header") || noDumpSelection(c)) {
			return err
		}
		fmt.Fprintf(c.App.ErrWriter, "qchain: %v (partial answer: the raw header fields, unvalidated)\n", err)
		if asJSON {
			writeJSON(w, map[string]any{"partial": true, "error": err.Error(), "header": h})
		} else {
			printFields(w, "raw header (does not open)", h)
		}
		return exitCode(1, nil)
	}
	defer f.Close()
	show := func(title string, v any) error {
		if asJSON {
			return writeJSON(w, v)
		}
		printFields(w, title, v)
		return nil
	}
	switch {
	case c.Bool("extensions"):
		return show("extensions", f.Header.Extensions)
	case c.Bool("l1"):
		l1, err := f.DumpL1()
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(w, l1)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "L1 table at %#x, %d entries (non-zero below)\nINDEX\tENTRY\tL2 OFFSET\tCOPIED\n", f.Header.L1TableOffset, f.Header.L1Size)
		for _, e := range l1 {
			fmt.Fprintf(tw, "%d\t%#016x\t%#x\t%t\n", e.Index, e.Entry, e.L2Offset, e.Copied)
		}
		return tw.Flush()
	case c.Int64("l2") >= 0:
		off, l2, err := f.DumpL2(uint64(c.Int64("l2")))
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(w, map[string]any{"l2_offset": off, "entries": l2})
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "L2 table at %#x (non-zero entries)\nINDEX\tGUEST OFFSET\tENTRY\tTYPE\tHOST OFFSET\tCOPIED\tDETAILS\n", off)
		for _, e := range l2 {
			host, det := "-", ""
			if e.HostOffset != nil {
				host = cHex(*e.HostOffset)
			}
			if e.CompressedOffset != nil {
				host = cHex(*e.CompressedOffset)
				det = fmt.Sprintf("compressed %d bytes", *e.CompressedSize)
			}
			if e.Bitmap != nil {
				det += fmt.Sprintf("bitmap %#016x", *e.Bitmap)
			}
			fmt.Fprintf(tw, "%d\t%#x\t%#016x\t%s\t%s\t%t\t%s\n", e.Index, e.GuestOffset, e.Entry, e.Type, host, e.Copied, det)
		}
		return tw.Flush()
	case c.Bool("refcounts"):
		bw := bufio.NewWriter(w)
		defer bw.Flush()
		lw := newListWriter(bw, asJSON)
		if !asJSON {
			fmt.Fprintf(bw, "refcount table at %#x, %d clusters, %d-bit refcounts\n%-16s%-16s%s\n", f.Header.RefcountTableOffset, f.Header.RefcountTableClusters, f.Header.RefcountBits(), "Offset", "Length", "Refcount")
		}
		err := f.DumpRefcounts(func(r qcow2.RefcountRun) error {
			if asJSON {
				return lw.item(r)
			}
			_, err := fmt.Fprintf(bw, "%-16s%-16s%d\n", cHex(r.Offset), cHex(r.Length), r.Refcount)
			return err
		})
		if err != nil {
			lw.abort()
			return err
		}
		return lw.close()
	case c.Bool("snapshots"):
		s, err := f.Snapshots()
		if err != nil {
			return err
		}
		return show("snapshots", s)
	case c.Bool("bitmaps"):
		b, err := f.Bitmaps()
		if err != nil {
			return err
		}
		return show("bitmaps", map[string]any{"extension": f.Header.Bitmaps, "bitmaps": b})
	}
	return show("header", f.Header)
}

func noDumpSelection(c *cli.Context) bool {
	return !c.Bool("extensions") && !c.Bool("l1") && c.Int64("l2") < 0 && !c.Bool("refcounts") && !c.Bool("snapshots") && !c.Bool("bitmaps")
}

// printFields prints a value as indented "key: value" lines, via its JSON
// form so the names are the spec's.
func printFields(w io.Writer, title string, v any) {
	fmt.Fprintf(w, "%s:\n", title)
	var buf []byte
	buf, _ = jsonIndent(v)
	w.Write(buf)
}
