package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

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

// compatEnv names the environment variable that chooses the output layout
// when --compat is not given.
const compatEnv = "QCHAIN_COMPAT"

// compatDescription is the help paragraph of the commands that take
// --compat.
const compatDescription = "The output is qemu-img 10.0's (JSON equal once parsed, text equal);\n" +
	"--compat=7.2, or " + compatEnv + "=7.2 when --compat is not given, prints qemu-img 7.2's."

// compatFlag is --compat, taken by every command whose output reproduces
// qemu-img's (info, map, check).
func compatFlag() cli.Flag {
	return &cli.StringFlag{Name: "compat", Usage: "print the output layout of qemu-img `VERSION`: " + qcow2.Layouts +
		" (default 10.0, or $" + compatEnv + ")"}
}

// outputOptions returns the layout --compat asks for, or else
// $QCHAIN_COMPAT, or else qemu-img 10.0's. An unknown value is an error
// that names where it came from.
func outputOptions(c *cli.Context) (qcow2.OutputOptions, error) {
	v, from := c.String("compat"), "--compat"
	if !c.IsSet("compat") {
		v, from = os.Getenv(compatEnv), compatEnv
		if v == "" {
			return qcow2.OutputOptions{}, nil
		}
	}
	l, err := qcow2.ParseLayout(v)
	if err != nil {
		return qcow2.OutputOptions{}, fmt.Errorf("%s=%s: %w", from, v, err)
	}
	return qcow2.OutputOptions{Layout: l}, nil
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
