package cli

import (
	"fmt"
	"os"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write the guest-visible content of an image chain as raw bytes (sparse when writing a file)",
		ArgsUsage: "IMAGE",
		Flags: append(chainFlags(), snapshotFlag(),
			&cli.StringFlag{Name: "o", Aliases: []string{"output-file"}, Usage: "write to `FILE` instead of standard output"}),
		Action: runExport,
	}
}

func runExport(c *cli.Context) error {
	name, err := oneImage(c)
	if err != nil {
		return err
	}
	chain, done, err := openChainAt(c, name, "snapshot")
	if err != nil {
		return err
	}
	defer done()
	out := c.String("o")
	if out == "" || out == "-" {
		return qcow2.Export(chain, c.App.Writer, false)
	}
	if err := refuseChainFile(chain, out); err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	// Holes only for regular files; devices and pipes get every byte.
	sparse := false
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		sparse = true
	}
	if err := qcow2.Export(chain, f, sparse); err != nil {
		// A read error names the image, a write error (*os.PathError)
		// the output file.
		f.Close()
		return err
	}
	return f.Close()
}

// refuseChainFile refuses an output file that is one of the chain's files:
// exporting must never write into the images it reads.
func refuseChainFile(chain *qcow2.Chain, out string) error {
	st, err := os.Stat(out)
	if err != nil {
		return nil
	}
	for _, name := range chain.Files() {
		if s, err := os.Stat(name); err == nil && os.SameFile(s, st) {
			return fmt.Errorf("%s: refusing to export into %s, a file of the chain being read", out, name)
		}
	}
	return nil
}
