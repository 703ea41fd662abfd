package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/qchain/qchain/qcow2"
	"github.com/urfave/cli/v2"
)

// chainFlags are the flags every reading command takes to open a chain.
func chainFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "format of the top image (qcow2 or raw); probed when empty"},
		&cli.StringFlag{Name: "backing-root", Usage: "refuse to open any file (image, backing file, data file) outside `DIR`"},
		&cli.BoolFlag{Name: "no-backing", Usage: "inspect the image alone, without opening its backing files"},
		&cli.BoolFlag{Name: "force-share", Aliases: []string{"U"}, Usage: "accepted for qemu-img compatibility: qchain never locks or writes"},
	}
}

func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Value: "human", Usage: "output format: human or json"}
}

func outputJSON(c *cli.Context) (bool, error) {
	switch o := c.String("output"); o {
	case "human":
		return false, nil
	case "json":
		return true, nil
	default:
		return false, fmt.Errorf("--output must be human or json, not %q", o)
	}
}

func chainOptions(c *cli.Context) qcow2.ChainOptions {
	return qcow2.ChainOptions{
		Root:      c.String("backing-root"),
		NoBacking: c.Bool("no-backing"),
		Format:    c.String("format"),
	}
}

// oneImage returns the single IMAGE argument.
func oneImage(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("%s: expected one IMAGE argument, got %d (flags go before the image)", c.Command.Name, c.NArg())
	}
	return c.Args().First(), nil
}

func openChain(c *cli.Context, name string, noBacking bool) (*qcow2.Chain, error) {
	opts := chainOptions(c)
	opts.NoBacking = opts.NoBacking || noBacking
	return qcow2.OpenChain(name, opts)
}

// imageAndOutput returns the single IMAGE argument and whether --output
// asks for JSON.
func imageAndOutput(c *cli.Context) (string, bool, error) {
	name, err := oneImage(c)
	if err != nil {
		return "", false, err
	}
	asJSON, err := outputJSON(c)
	return name, asJSON, err
}

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

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
